"""The console entry point in a child process, without paying for a new interpreter each time.

Tests run the CLI as a user would: a separate process with its own environment, working directory, stdout,
stderr and exit status. Starting Python and importing typer, rich, SQLAlchemy and torch costs about a second
per call; over a hundred calls that was minutes of the suite. This zygote imports all of it once, then forks a
child per call: the child gets the call's environment, cwd and output files, runs `inpaint-advisor` exactly as
`python -m advisor` would (the same `advisor.cli.fastpath.main`), and exits with its status. Each child starts from
the zygote's pristine state, so nothing leaks from one call to the next.

Protocol (one JSON object per line): the test sends {argv, env, cwd, stdout, stderr, timeout}; the zygote
answers {returncode, timed_out} once the child has ended (a negative returncode is the signal that ended it,
as subprocess reports it).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys


def _warm() -> None:
    """Import what commands import, so that forked children find it loaded."""
    import torch  # noqa: F401  (its import starts no threads: children fork safely)

    import advisor.advice.lookup  # noqa: F401
    import advisor.cli.fastpath  # noqa: F401
    import advisor.cli.main  # noqa: F401  (typer, rich, every command module)
    import advisor.cli.render  # noqa: F401
    import crawler.registry  # noqa: F401
    import merge.engine  # noqa: F401


def _child(request: dict) -> None:
    """In the forked child: become the call, run it, exit with its status. Never returns."""
    code = 1
    try:
        os.setsid()  # a group of its own: a timeout ends it and whatever it started
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY),
                                (2, request["stderr"], os.O_WRONLY)):  # fmt: skip
            target = os.open(path, flags)
            os.dup2(target, fd)
            os.close(target)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from rich.console import Console

        from advisor.cli import output

        # the consoles read the terminal width and colour settings when made: make them under this environment
        output.out = Console()
        output.err = Console(stderr=True, soft_wrap=True)
        sys.argv = ["inpaint-advisor", *request["argv"]]
        from advisor.cli.fastpath import main

        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _serve() -> None:
    _warm()
    replies = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        replies.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        # sleep until the child ends (its pidfd turns readable) or its time is up: polling waitpid every few
        # milliseconds was 16 s of the suite's CPU time
        ended = os.pidfd_open(pid)
        timed_out = not select.select([ended], [], [], request.get("timeout", 120))[0]
        os.close(ended)
        if timed_out:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status), "timed_out": timed_out}) + "\n")
        replies.flush()


if __name__ == "__main__":
    _serve()

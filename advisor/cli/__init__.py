"""`inpaint-advisor`: a thin typer layer over the library functions in crawler/, advisor/ and merge/. One module
per command group (lookup.py: lookup and probe; crawl.py; status.py; merge.py; build.py; cache.py;
schedule.py; scan.py; team.py), common.py holding what they share and main.py registering them all; and what
every command prints through: rich output for people (render.py), JSON (jsonout.py), where it goes and how a
command fails (output.py). fastpath.py is the entry point: it answers a plain `lookup` without importing typer.

This package imports nothing itself: importing fastpath, render or output costs no typer import.
"""

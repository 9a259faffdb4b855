"""Types of merge._fused (merge/_fused.c, the merge's one-pass CPU loop): addresses are ints, each followed by the
memory it lies in, ``lo, hi`` (the loop refuses an access outside it: ValueError), dtypes the codes of
``merge.fused.CODES``, counts in elements (``copy_bytes``: in bytes)."""

def available() -> bool: ...
def add_difference(a: int, a_lo: int, a_hi: int, a_dtype: int, b: int, b_lo: int, b_hi: int, b_dtype: int, c: int,
                   c_lo: int, c_hi: int, c_dtype: int, out: int, out_lo: int, out_hi: int, out_dtype: int, n: int,
                   m: float, /) -> bool: ...  # fmt: skip
def convert(src: int, src_lo: int, src_hi: int, src_dtype: int, dst: int, dst_lo: int, dst_hi: int, dst_dtype: int,
            n: int, /) -> None: ...  # fmt: skip
def transpose(src: int, src_lo: int, src_hi: int, dst: int, dst_lo: int, dst_hi: int, rows: int, cols: int,
              itemsize: int, /) -> None: ...  # fmt: skip
def copy_bytes(src: int, src_lo: int, src_hi: int, dst: int, dst_lo: int, dst_hi: int, nbytes: int, /) -> None: ...

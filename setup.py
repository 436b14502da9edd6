"""Only the optional C accelerator lives here; the rest of the metadata is in pyproject.toml.

``optional=True``: where no C compiler or Python headers (or, for ``_seal``, OpenSSL
headers) are at hand the build of ``ftx.core.udp._burst`` / ``ftx._smallfile`` / ``ftx._smallread`` / ``ftx.core.secure._seal`` is
skipped and ftx runs its pure-Python loops instead.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("ftx.core.udp._burst", ["ftx/core/udp/_burst.c"], optional=True,
                             extra_compile_args=["-O2"]),
                   # a whole small file in one call on the receiver (ftx/fileops.py link_new)
                   Extension("ftx._smallfile", ["ftx/_smallfile.c"], optional=True, extra_compile_args=["-O2"]),
                   # a run of small files read and framed in one call on the sender (ftx/smallrun.py frames)
                   Extension("ftx._smallread", ["ftx/_smallread.c"], optional=True, extra_compile_args=["-O2"]),
                   # sealing UDP bursts with OpenSSL's libcrypto (headers needed to build it)
                   Extension("ftx.core.secure._seal", ["ftx/core/secure/_seal.c"], optional=True,
                             libraries=["crypto"], extra_compile_args=["-O2"])])

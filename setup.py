"""Only the optional C accelerator lives here; the rest of the metadata is in pyproject.toml.

``optional=True``: where no C compiler or Python headers are at hand the build of
``ftx.core.udp._burst`` is skipped and ftx runs its pure-Python loops instead.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("ftx.core.udp._burst", ["ftx/core/udp/_burst.c"], optional=True,
                             extra_compile_args=["-O2"])])

"""The compiled extension and its flags; everything else is in pyproject.toml."""
import glob

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

# No -ffast-math (linking it turns on flush-to-zero for the whole process) and no
# -march=native in what ships; -fno-math-errno / -fno-trapping-math let gcc vectorise
# the pointwise loops without changing results.
extensions = [
    Extension(
        "lstmfast._kernels",
        sources=["src/lstmfast/_kernels.pyx", "csrc/recurrence.c", "csrc/blas.c"],
        depends=sorted(glob.glob("csrc/*.h")),  # the templates: rebuild when they change
        include_dirs=["csrc", np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
        extra_compile_args=["-O3", "-fno-math-errno", "-fno-trapping-math", "-pthread"],
        extra_link_args=["-pthread"],
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": 3}))

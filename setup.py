"""The compiled extension and its flags; everything else is in pyproject.toml.

csrc/recurrence.c (the kernels) is compiled once per instruction set the compiler can
build for the target, each time with that set's flags; the rest (the binding, the
threads, the dispatch) once with the baseline flags. Which variant runs is chosen at
import from the CPU (csrc/dispatch.c). A variant the compiler cannot build is skipped
with a message: the package still installs, with the others.
"""
import glob
import os
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# No -ffast-math (linking it turns on flush-to-zero for the whole process) and no
# -march=native in what ships; -fno-math-errno / -fno-trapping-math let the compiler
# vectorise the pointwise loops without changing results; -g0 overrides Python's -g
# (debug info was four fifths of the library).
CFLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-pthread", "-g0"]

# (name, flags, the condition a probe checks: the target is this architecture). The
# x86-64 levels v3 and v4 spelled as their features, which gcc 10 (manylinux2014's
# compiler) accepts where it does not know -march=x86-64-v3; the tuning stays generic.
X86_V3 = ["-mavx", "-mavx2", "-mfma", "-mbmi", "-mbmi2", "-mf16c", "-mlzcnt", "-mmovbe"]
X86_V4 = X86_V3 + ["-mavx512f", "-mavx512bw", "-mavx512cd", "-mavx512dq", "-mavx512vl",
                   "-mprefer-vector-width=512"]
VARIANTS = [
    ("avx512", X86_V4, "defined(__x86_64__) && defined(__AVX512F__)"),
    ("avx2", X86_V3, "defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__)"),
    ("neon", [], "defined(__aarch64__)"),
    ("baseline", [], "!defined(__aarch64__)"),  # aarch64 always has NEON
]


class BuildVariants(build_ext):
    """Compiles the kernel variants into objects linked into the extension."""

    def _probe(self, flags, condition):
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write(f"#if !({condition})\n#error not this target\n#endif\n"
                        "typedef float v16 __attribute__((vector_size(64)));\n"
                        "v16 lf_probe(v16 a, v16 b) { return a * b + a; }\n")
            try:
                self.compiler.compile([src], output_dir=tmp, extra_postargs=CFLAGS + flags)
            except Exception:
                return False
        return True

    def build_extension(self, ext):
        # Python's LDSHARED may carry a run path to the build machine's Python (pyenv and
        # similar builds do): the library links nothing but libc, so none is wanted.
        self.compiler.linker_so = [a for a in self.compiler.linker_so
                                   if not a.startswith("-Wl,-rpath")]
        if ext.name == "lstmfast._kernels":
            built = []
            for name, flags, condition in VARIANTS:
                if not self._probe(flags, condition):
                    print(f"lstmfast: not building the {name} kernels "
                          "(this compiler or target cannot)")
                    continue
                out = os.path.join(self.build_temp, "variants", name)
                ext.extra_objects += self.compiler.compile(
                    ["csrc/recurrence.c"], output_dir=out, include_dirs=ext.include_dirs,
                    macros=[(f"LF_VARIANT_{name.upper()}", "1")],
                    extra_postargs=CFLAGS + flags, depends=ext.depends)
                ext.define_macros.append((f"LF_HAVE_{name.upper()}", "1"))
                built.append(name)
            if not built:
                raise RuntimeError("lstmfast: no kernel variant could be compiled")
            print(f"lstmfast: kernel variants built: {', '.join(built)}")
        super().build_extension(ext)


extensions = [
    Extension(
        "lstmfast._kernels",
        sources=["src/lstmfast/_kernels.pyx", "csrc/threads.c", "csrc/dispatch.c",
                 "csrc/blas.c"],
        depends=sorted(glob.glob("csrc/*.h")),  # the templates: rebuild when they change
        include_dirs=["csrc", np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
        extra_compile_args=CFLAGS,
        extra_link_args=["-pthread"],
    )
]

if __name__ == "__main__":  # tests read CFLAGS and VARIANTS from this file
    setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": 3}),
          cmdclass={"build_ext": BuildVariants})

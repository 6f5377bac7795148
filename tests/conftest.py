import os
import sys

# The test files import the numpy oracle as a plain module: `from reference import ...`.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402

# The kernel-level test files run once per kernel variant this CPU can run (baseline,
# avx2, avx512 on x86-64), switching the variant the binding calls; the rest of the
# suite runs the variant chosen at import.
PER_VARIANT = {"test_layers_oracle", "test_cells", "test_gradcheck", "test_work_reuse",
               "test_hypothesis", "test_threads"}


def _usable_variants():
    from lstmfast import _kernels
    return [n for n in _kernels.compiled_isas() if _kernels.cpu_supports(n)]


def pytest_generate_tests(metafunc):
    if metafunc.module.__name__.rsplit(".", 1)[-1] in PER_VARIANT:
        metafunc.fixturenames.append("kernel_variant")
        metafunc.parametrize("kernel_variant", _usable_variants(), indirect=True)


@pytest.fixture
def kernel_variant(request):
    from lstmfast import _kernels
    previous, reason = _kernels.ISA, _kernels.ISA_REASON
    _kernels._select(request.param)
    yield request.param
    _kernels._select(previous, reason)

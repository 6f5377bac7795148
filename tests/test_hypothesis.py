"""Property test: on random small shapes, modes, directions, depths, layouts, lengths and
initial states, the float64 layer agrees with the float64 oracle in every output and
gradient."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layer_helpers import (
    MODE_IDS, Case, assert_results_close, make_layer, make_problem, oracle, run_layer,
)

# float64 against float64: only the summation order differs (see test_layers_oracle.py)
F64_RTOL = 1e-10


@st.composite
def cases(draw):
    mode = draw(st.sampled_from(MODE_IDS))
    T = draw(st.integers(1, 5))
    B = draw(st.integers(1, 4))
    H = draw(st.integers(2 if mode == "lstm_proj" else 1, 5))
    proj = draw(st.integers(1, H - 1)) if mode == "lstm_proj" else 0
    lengths = draw(st.one_of(st.none(), st.lists(st.integers(1, T), min_size=B, max_size=B)))
    return Case(mode, num_layers=draw(st.integers(1, 3)), bidirectional=draw(st.booleans()),
                T=T, B=B, I=draw(st.integers(1, 5)), H=H, proj_size=proj,
                lengths=None if lengths is None else tuple(lengths),
                with_state=draw(st.booleans()), bias=draw(st.booleans()))


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), batch_first=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_random_configurations_match_oracle(case, batch_first, seed):
    prob = make_problem(case, seed)
    m = make_layer(case, np.float64, batch_first)
    m.load_state_dict(prob["params"])
    assert_results_close(run_layer(m, case, prob, batch_first), oracle(case, prob), case,
                         F64_RTOL)

"""The fake fit the orchestration tests use (tests/helpers.py) behaves as they assume."""
from core.hyp import default_hyp
from core.train import TrainOptions
from tests.helpers import fake_fit, score


def test_fake_fit_is_deterministic_and_peaks_inside_the_space():
    hyp = default_hyp()
    opts = TrainOptions(epochs=3, fitness_weights=(0, 0, 0.1, 0.9))
    a, b = fake_fit(None, None, hyp, opts), fake_fit(None, None, hyp, opts)
    assert [h["fitness"] for h in a.history] == [h["fitness"] for h in b.history]
    assert a.best["epoch"] == 2
    assert score({**hyp, "lr0": 0.003, "mosaic": 0.7, "momentum": 0.9, "mixup": 0.2, "anchors": 4}) == 1.0
    assert score(hyp) < 1.0

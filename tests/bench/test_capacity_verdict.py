"""Issue #11's targets read against the measured noise (bench/capacity_verdict.py)."""

from sollol_proxy.bench.capacity_runs import Run, Sample
from sollol_proxy.bench.capacity_verdict import Ratio, judge, noise, verdict


def _run(total_p95: float, count: int = 100) -> Run:
    # 90 fast requests and 10 at `total_p95`: the p95 is `total_p95` (TTFT a tenth of it).
    samples = [Sample(1.0 + i * 0.01, 0.01, 0.1, True) for i in range(count - 10)]
    samples += [Sample(2.0 + i * 0.01, total_p95 / 10, total_p95, True) for i in range(10)]
    return Run(samples)


def test_a_ratio_at_the_target_is_met_one_within_the_noise_is_not_called_met() -> None:
    assert judge(1.04, 1.05, 1.2) == "met"
    assert judge(1.10, 1.05, 1.2) == "within the noise (1.20), not shown met"
    assert judge(1.30, 1.05, 1.2) == "**not met**"


def test_the_noise_is_the_widest_apart_two_runs_of_one_mode_were() -> None:
    assert noise(Ratio(1.0, (0.8, 1.1))) == 1.25  # 0.8 is 1.25 apart the other way
    assert noise(Ratio(1.02, (1.0, 1.02))) == 1.02


def test_the_verdict_names_a_gap_beyond_the_noise() -> None:
    told, again = _run(1.0), _run(1.02)  # two runs of told: 2 % apart
    lines = verdict(
        {"auto": _run(1.3), "told": told, "told again": again, "no queue": _run(2.0)}, 0
    )
    total = next(line for line in lines if line.startswith("- total p95 within 5 %"))
    assert "auto 1.30 pooled" in total and "A/A 1.02" in total and "pooled **not met**" in total
    below = next(line for line in lines if line.startswith("- total p95 never above"))
    assert "auto over no queue 0.65 pooled" in below and "pooled met" in below


def test_the_verdict_calls_a_gap_inside_the_noise_neither_met_nor_a_miss() -> None:
    told, again = _run(1.0), _run(1.15)  # a noisy bench run: told 15 % from itself
    lines = verdict(
        {"auto": _run(1.1), "told": told, "told again": again, "no queue": _run(1.1)}, 0
    )
    total = next(line for line in lines if line.startswith("- total p95 within 5 %"))
    assert "pooled within the noise" in total
    assert any(line.startswith("- throughput within 5 %: auto ") for line in lines)


def test_the_verdict_reads_every_seed() -> None:
    told = Run.pooled([_run(1.0), _run(1.0)])
    auto = Run.pooled([_run(1.0), _run(1.5)])
    lines = verdict({"auto": auto, "told": told, "told again": told, "no queue": auto}, 0)
    total = next(line for line in lines if line.startswith("- total p95 within 5 %"))
    assert "(1.00, 1.50 by seed)" in total and "1 of 2 runs met, **not met** beyond" in total


def test_a_mode_with_no_answer_after_the_warm_up_is_named_not_divided_by() -> None:
    # A short run on a slow machine (CI's): every answer of told came during the warm-up.
    told, others = _run(1.0), _run(1.0)
    lines = verdict({"auto": others, "told": told, "told again": others, "no queue": others}, 5.0)
    assert (
        lines[-1] == "- not read: no answer after the warm-up in auto, told, told again, no queue"
    )
    late = Run([Sample(6.0, 0.1, 0.2, True)])
    lines = verdict({"auto": late, "told": told, "told again": late, "no queue": late}, 5.0)
    assert lines[-1] == "- not read: no answer after the warm-up in told"

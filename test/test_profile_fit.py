"""Timing profiles: the packaged ones reproduce their anchors, and the least-squares fit recovers a profile from
shard call times, both from exact predictions and through the sim's real (sleeping) shard calls."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from importlib import resources

import pytest
from npu_geometry import all_blocks, cut, siglip_b16_manifest, write_shard_set

from rk_siglip_ros.measure.profile_fit import CallTime, fit_profile, predict_ms, term_values
from rk_siglip_ros.measure.selfcheck import measure_calls
from rk_siglip_ros.runtime import timing
from rk_siglip_ros.runtime.backends.sim import SimBackend
from rk_siglip_ros.runtime.timing import load_timing_profile, shard_gmacs

PACKAGED = ("rk3588-fp16", "rk3588-fp16-rk1")


def packaged_json(name: str) -> dict:
    return json.loads((resources.files("rk_siglip_ros.runtime") / "timing_profiles" / f"{name}.json").read_text())


def test_both_profiles_are_packaged_with_their_derivation_and_the_conservative_one_is_the_default():
    assert set(PACKAGED) <= set(timing.available_profiles())
    assert timing.DEFAULT_PROFILE == "rk3588-fp16-rk1"
    for name in PACKAGED:
        data = packaged_json(name)
        assert data["derivation"] and data["sources"] and data["all_cores"]["speedup"]["attention"] == 1.0


def test_rk1_profile_reproduces_the_independent_measurement():
    """Whole graph 1624 ms on one core and 1195 ms with NPU_CORE_0_1_2; the seed's 24 shards 2125 / 3600 ms."""
    sim = SimBackend("rk3588-fp16-rk1")
    whole = siglip_b16_manifest("whole", [all_blocks(head=False)])
    assert sim.predicted_ms(whole, whole.shards[0]) == pytest.approx(1624, rel=0.01)
    assert sim.predicted_ms(whole, whole.shards[0], cores=3) == pytest.approx(1195, rel=0.01)
    for tile, measured in ((None, 2125), (32, 3600)):
        seed = siglip_b16_manifest("seed", [[label] for label in all_blocks(head=False)[1:]], tile=tile)
        seed.shards[0].macs += whole.shards[0].macs - sum(s.macs for s in seed.shards)  # embedding in shard 0
        assert sum(sim.predicted_ms(seed, s) for s in seed.shards) == pytest.approx(measured, rel=0.01)


def test_rk1_profile_is_the_least_squares_fit_of_its_anchors():
    """The derivation is executable: refitting the anchors stored in the file gives the file's terms."""
    data = packaged_json("rk3588-fp16-rk1")
    fit = fit_profile([CallTime.from_dict(a) for a in data["anchors"]], base="rk3588-fp16", outlier_mads=None)
    stored = term_values(load_timing_profile("rk3588-fp16-rk1"))
    for term, value in term_values(fit.profile).items():
        assert value == pytest.approx(stored[term], rel=0.005), term
    assert fit.kept == ["all_cores_speedup_attention"]  # one all-cores anchor: only the dense class is fitted


def chain_samples(profile_name: str, layers: int = 4) -> list[CallTime]:
    """Exact predictions of a profile for every shard of several cuts, on one core and on all three."""
    profile = load_timing_profile(profile_name)
    samples = []
    for kind, tile in (("whole", None), ("pipeline3", None), ("seed", None), ("seed", 32)):
        manifest = siglip_b16_manifest(kind, cut(kind, layers), tile=tile)
        for shard in manifest.shards:
            dense, attention = shard_gmacs(manifest, shard)
            for cores in (1, 3):
                shape = CallTime(1, dense, attention, 0.0, tiled=bool(tile), cores=cores)
                samples.append(replace(shape, ms=predict_ms(profile, shape)))
    return samples


@pytest.mark.parametrize("name", PACKAGED)
def test_fit_recovers_a_profile_from_its_exact_predictions(name):
    fit = fit_profile(chain_samples(name), base="rk3588-fp16" if name != "rk3588-fp16" else "rk3588-fp16-rk1")
    expected = term_values(load_timing_profile(name))
    assert fit.kept == []
    for term, value in term_values(fit.profile).items():
        assert value == pytest.approx(expected[term], rel=1e-6), term
    assert fit.rms_error < 1e-9


def test_terms_no_measurement_exercises_are_kept_and_inseparable_ones_refused():
    untiled = [s for s in chain_samples("rk3588-fp16-rk1") if not s.tiled]
    fit = fit_profile(untiled, base="rk3588-fp16")
    assert fit.kept == ["attention_tiled_ms_per_gmac"]
    base = load_timing_profile("rk3588-fp16")
    assert fit.profile.attention_ms_per_gmac["tiled"] == base.attention_ms_per_gmac["tiled"]
    whole_only = [s for s in untiled if s.dense_gmac > 20 and s.cores == 1][:1]
    with pytest.raises(ValueError, match="several cuts"):
        fit_profile(whole_only)


def host_delay_ms(folder) -> float:
    """What the machine itself adds to every timed call (thread wake-up after the sleep, the encoder's own work):
    the same measurement with a profile that predicts a fixed 5 ms per call (a real sleep, like every other call;
    a zero sleep would only yield the CPU). It belongs to the per-call term, as on a board."""
    from rk_siglip_ros.manifest import load_manifest

    fixed = {"name": "fixed", "per_call_ms": 5.0, "dense_ms_per_gmac": 0.0}
    calls = measure_calls(load_manifest(folder, verify=()), "fixed", "sim", (0, 1, 2), frames=2,
                          timing_profile=fixed, warmup=0)
    return statistics.median(call.ms for call in calls) - 5.0


@pytest.mark.parametrize("name", PACKAGED)
def test_fit_recovers_the_generating_profile_through_the_sim_within_5_percent(tmp_path, name):
    """selfcheck's measuring path on the sim: real shard calls (sleeps) of three cuts on each core and on all three,
    timed by the scheduler's trace, fitted; every term within 5 % of the profile that generated the times.

    Real time (time_scale 1, where a smaller scale would inflate the host's own time). The machine adds a delay to
    every call (0.1-1 ms here depending on load), which the fit rightly puts into the per-call term: it is measured
    alongside and added to the generating per-call term. Two layers keep the run short; two frames per core (six on
    all cores) keep a stray scheduling delay from deciding a term."""
    from rk_siglip_ros.manifest import load_manifest

    samples, delays = [], []
    for kind, tile in (("whole", None), ("seed", None), ("seed", 32)):
        folder = write_shard_set(tmp_path / f"{kind}-{tile}", kind, layers=2, tile=tile)
        calls = measure_calls(load_manifest(folder, verify=()), folder.name, "sim", (0, 1, 2), frames=2,
                              timing_profile=name, warmup=0)
        samples += [call.sample for call in calls]
        if kind == "seed" and not tile:
            delays.append(host_delay_ms(folder))
    fit = fit_profile(samples, base=name)
    assert fit.kept == []
    expected = term_values(load_timing_profile(name))
    expected["per_call_ms"] += statistics.median(delays)
    for term, value in term_values(fit.profile).items():
        assert value == pytest.approx(expected[term], rel=0.05), (term, fit.summary(), delays)


def test_stray_delays_are_set_aside_and_named():
    """A few calls hit by a stray delay (an interrupt, another process) must not move the profile: the fit sets them
    aside and says how many; with outlier rejection off they visibly would."""
    samples = chain_samples("rk3588-fp16")
    hit = {3: 12.0, 17: 25.0, 40: 8.0}  # sample index -> extra milliseconds
    delayed = [replace(s, ms=s.ms + hit.get(i, 0.0)) for i, s in enumerate(samples)]
    fit = fit_profile(delayed, base="rk3588-fp16-rk1")
    assert sorted(delayed.index(s) for s in fit.outliers) == sorted(hit)
    expected = term_values(load_timing_profile("rk3588-fp16"))
    for term, value in term_values(fit.profile).items():
        assert value == pytest.approx(expected[term], rel=1e-6), term
    assert f"{len(hit)} set aside as stray delays" in fit.summary()
    naive = term_values(fit_profile(delayed, base="rk3588-fp16-rk1", outlier_mads=None).profile)
    assert max(abs(naive[t] - expected[t]) / expected[t] for t in expected) > 0.01

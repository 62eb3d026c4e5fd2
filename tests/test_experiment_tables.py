"""The record tables of the redesigned studies read their contrasts from paired seeds."""

from benchmarks.experiments import path_star, pause_grid


def _pause_doc():
    acc = {("standard", "standard"): [0.60, 0.70, 0.65], ("standard", "pause"): [0.62, 0.71, 0.69],
           ("pause", "standard"): [0.55, 0.75, 0.65], ("pause", "pause"): [0.70, 0.80, 0.75]}
    results = [{"seed": s, "pretrain": pt, "finetune": ft, "accuracy": v[s], "accuracy_T": v[s], "accuracy_F": v[s],
                "steps": 100, "best_step": 80} for (pt, ft), v in acc.items() for s in range(3)]
    return {"args": {"eval": 10, "items": 6}, "results": results}


def test_pause_contrasts_are_paired_differences():
    text = pause_grid.table(_pause_doc())
    # ss -> pp differences: +10, +10, +10 points: zero spread, so the interval is the point itself
    assert "| both vs neither (ss → pp) | +10.0 [+10.0, +10.0] | +10.0, +10.0, +10.0 | yes |" in text
    # ss -> sp: +2, +1, +4 (mean 2.33, sd 1.53, t 4.303: half-width 3.79): not resolved
    assert "| pause-ft after standard pt (ss → sp) | +2.3 [-1.5, +6.1] | +2.0, +1.0, +4.0 | no |" in text
    assert "| standard | standard | 65.0 ± 5.0 | 60.0, 70.0, 65.0 |" in text


def test_path_star_table_pairs_methods_with_ntp_by_seed():
    def run(method, seed, acc):
        return {"method": method, "seed": seed, "curve": [{"step": 10, "scores": {"4": {
            "accuracy": acc, "first_step": acc, "valid_walk": 1.0}}}]}
    doc = {"args": {"methods": "ntp,fsp_bce", "lengths": [4]},
           "results": [run("ntp", 0, 0.5), run("ntp", 1, 0.4), run("fsp_bce", 0, 0.9), run("fsp_bce", 1, 0.8)]}
    text = path_star.table(doc)
    assert "| 4 | fsp_bce | 0.850 ± 0.071 |" in text
    assert "+0.400 [+0.400, +0.400]" in text  # both seeds +0.4 over their own NTP run

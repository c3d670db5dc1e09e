"""``cellbench eval`` end to end on bbbc021-sim (tiny): sanity checks, determinism, shard merge."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellbench.evaluation import evaluate, merge_shards
from cellbench.io import sha256_file
from cellbench.metrics.bootstrap import bootstrap_mean
from cellbench.protocol import write_protocol
from tests.conftest import make_tiny_sim, run_cli

REWARDS = ("moa", "nuc_in_cyto", "roundness", "nuc_size", "cyto_size", "nuc_count", "cyto_count")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """A tiny simulated dataset, its protocol and the image folders of a few fake generators."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    ds, table = make_tiny_sim(root, mp)
    write_protocol(table, root / "protocol.csv")
    rng = np.random.default_rng(0)
    # "wrong compounds": each task gets the real target of a task with another MoA
    by_moa = table.sort_values(["moa", "task_id"]).reset_index(drop=True)
    shift = len(by_moa) // 2
    wrong_target = dict(
        zip(by_moa["task_id"], np.roll(by_moa["target_key"].to_numpy(), shift), strict=True)
    )
    train_keys = ds.split("train")["SAMPLE_KEY"].tolist()
    makers = {
        "real": lambda r: ds.load_crop(r.target_key),
        "train": lambda r: ds.load_crop(train_keys[int(r.Index) % len(train_keys)]),
        "identity": lambda r: ds.load_crop(r.control_key),
        "noise": lambda r: rng.integers(0, 256, (96, 96, 3), dtype=np.uint8),
        "black": lambda r: np.zeros((96, 96, 3), np.uint8),
        "wrong": lambda r: ds.load_crop(wrong_target[r.task_id]),
    }
    for name, make in makers.items():
        folder = root / name
        folder.mkdir()
        for r in table.itertuples():
            np.save(folder / f"{r.task_id}.npy", make(r))
    results = {
        name: evaluate(root / name, "bbbc021-sim", data_dir=data, seed=0, out=root / f"{name}.json")
        for name in makers
    }
    yield {"root": root, "data": data, "ds": ds, "table": table, "results": results}
    mp.undo()


def _v(doc: dict, metric: str) -> float:
    return doc["metrics"][metric]["value"]


def _per_task(world, name: str, metric: str) -> pd.Series:
    table = pd.read_csv(world["root"] / f"{name}.per_image.csv").set_index("task_id")
    return table.loc[world["table"]["task_id"], metric]


def test_real_targets_score_the_reference(world) -> None:
    doc = world["results"]["real"]
    for m in (*REWARDS, "overall", "moa_accuracy"):
        assert doc["metrics"][m] == doc["reference"]["metrics"][m]
    for m in ("nuc_size", "cyto_size", "nuc_count", "cyto_count", "roundness"):
        assert -2.5 < _v(doc, m) < 0  # about -1 each by construction (z ~ N(0, 1) on real data)
    assert abs(_v(doc, "fid_o")) < 1e-6 and abs(_v(doc, "fid_c")) < 1e-6
    assert doc["complete"] is True


def test_bad_generators_score_clearly_worse(world) -> None:
    res = world["results"]
    real = _v(res["real"], "overall")
    for name in ("noise", "black", "identity"):
        # measured (tiny, seed 0): real 0.42, identity -1.48, noise and black far lower
        assert _v(res[name], "overall") < real - 1.0, name
        # paired over tasks: the 95% bootstrap interval of (generator - real) lies below zero
        diff = _per_task(world, name, "overall") - _per_task(world, "real", "overall")
        assert bootstrap_mean(diff.to_numpy(), seed=0).ci_high < 0, name
        assert _v(res[name], "fid_o") > 20.0, name
    assert _v(res["wrong"], "moa") < _v(res["real"], "moa") - 0.2
    assert res["black"]["complete"] is False  # constant images are reported ...
    assert res["black"]["images"]["n_problems"] == len(world["table"])  # ... but still scored
    assert res["black"]["metrics"]["overall"]["n"] == len(world["table"])


def test_held_out_set_metrics_tell_real_from_wrong_images(world) -> None:
    """The real targets are the real side itself: precision, recall, density and coverage 1 and
    every compound retrieved first; copies of one real image are precise but cover nothing; the
    targets of other-MoA tasks retrieve the wrong compounds."""
    res = world["results"]
    real = res["real"]["metrics"]
    for m in ("precision", "recall", "coverage", "retrieval_top1"):
        assert real[m]["value"] == 1.0, m
    # density counts real 5-NN balls holding each image; against itself every 5th neighbour sits
    # exactly on its ball's edge, where float32 distances decide a few ties (measured 1.0167:
    # 7 of 420 ties)
    assert abs(real["density"]["value"] - 1.0) <= 0.02
    assert real["retrieval_map"]["n_gen"] == len(world["table"])
    assert res["wrong"]["metrics"]["retrieval_top1"]["value"] < 0.5
    assert res["wrong"]["metrics"]["retrieval_map"]["value"] < real["retrieval_map"]["value"]
    for name in ("noise", "black"):
        assert res[name]["metrics"]["precision"]["value"] < 0.1, name
        assert res[name]["metrics"]["coverage"]["value"] < 0.1, name
    ident = res["identity"]
    # the morphology profile is computed in the segmentation pass: retrieval in its space too
    assert real["retrieval_top1_profile"]["value"] == 1.0
    assert ident["metrics"]["retrieval_map_profile"]["value"] is not None
    assert "absent" not in ident["metrics"]["retrieval_map_profile"]
    ref = ident["reference"]["metrics"]  # split half of the real crops: the ceiling
    assert ref["retrieval_top1"]["value"] >= ident["metrics"]["retrieval_top1"]["value"]
    assert ident["set_detail"]["coverage"]["k"] == 5
    assert set(ident["set_detail"]["coverage"]["per_moa"]) == set(world["table"]["moa"])


def test_copies_of_training_crops_and_of_the_input_are_flagged(world) -> None:
    res = world["results"]
    flags = {n: d["set_detail"]["memorisation"]["flags"] for n, d in res.items()}
    assert flags["train"] == ["copies training images"]
    assert flags["identity"] == ["copies its input"]
    assert flags["real"] == [] and flags["wrong"] == []
    assert _v(res["train"], "memorisation") == 1.0 and _v(res["identity"], "input_copies") == 1.0
    # unseen real crops sit at the rule's own quantile (1 %), far under the 10 % flag rate
    assert _v(res["real"], "memorisation") <= 0.05 and _v(res["real"], "input_copies") <= 0.05
    detail = res["identity"]["set_detail"]["memorisation"]
    assert detail["exact_input_copies"] == 1.0 and detail["exact_train_copies"] == 0.0


def test_same_inputs_same_metrics(world) -> None:
    again = evaluate(world["root"] / "identity", "bbbc021-sim", data_dir=world["data"], seed=0)
    first = world["results"]["identity"]
    for key in ("metrics", "per_moa", "per_compound", "reference", "fid_detail", "set_detail"):
        assert again[key] == first[key], key


def test_profile_metrics_separate_real_from_identity(world) -> None:
    """The morphology-profile metrics in a full evaluation: the real targets themselves shift
    exactly as the real targets do; identity (the DMSO control) shows no compound-specific shift
    and is farther from the real profiles than real ones are."""
    res = world["results"]
    corr = {k: res[k]["metrics"]["profile_shift_corr"]["value"] for k in res}
    energy = {k: res[k]["metrics"]["profile_energy"]["value"] for k in res}
    detail = res["identity"]["set_detail"]["profile_shift_corr"]
    assert corr["real"] == pytest.approx(1.0, abs=1e-6)
    # measured (tiny, seed 0): real 1.0; identity -0.031 (null mean -0.014, 95% quantile 0.071,
    # p 0.62); wrong 0.125; the split-half reference 0.305; profile_energy identity 6.89 (p 0.005)
    assert corr["identity"] < detail["null_q95"] and detail["p_value"] > 0.05
    assert corr["wrong"] < corr["real"] - 0.3
    assert energy["identity"] > 1.0 > energy["real"]
    assert res["identity"]["set_detail"]["profile_energy"]["p_value"] < 0.05
    ref = res["identity"]["reference"]["metrics"]["profile_shift_corr"]["value"]
    assert ref > corr["identity"] + 0.25  # the split-half ceiling
    assert detail["n_features"] == 34 and detail["n_permutations"] == 200


def test_result_has_provenance(world) -> None:
    doc = json.loads((world["root"] / "identity.json").read_text())
    for key in (
        "schema",
        "cellbench_version",
        "git_commit",
        "command",
        "seed",
        "dataset",
        "protocol",
        "images",
        "metric_suite_version",
        "segmenter",
        "weights",
        "reference_stats_sha256",
        "environment",
        "wall_time_s",
        "feature_network",
    ):
        assert key in doc, key
    assert doc["dataset"]["name"] == "bbbc021-sim" and doc["dataset"]["simulated"] is True
    assert len(doc["weights"]["inception"]) == 64 and len(doc["weights"]["classifier"]) == 64
    assert doc["segmenter"] == {"name": "classical", "version": "3"}
    assert doc["metric_suite_version"] == "3"
    proto = doc["protocol"]
    assert (proto["name"], proto["version"], proto["built"]) == ("cellflux-iid", "1", True)
    assert proto["fid_real"] == "compounds" and proto["n_tasks"] == len(world["table"])
    from cellbench.data.content import crop_file_sha256s, digest_of

    keys = [*world["table"]["target_key"], *world["table"]["control_key"]]
    shas = crop_file_sha256s(world["ds"], keys)  # recomputed here from the crop files
    assert doc["dataset"]["crops_sha256"] == digest_of(shas)
    assert doc["dataset"]["n_crops"] == len(set(keys))
    per_image = pd.read_csv(world["root"] / "identity.per_image.csv")
    assert len(per_image) == len(world["table"])
    assert per_image["overall"].mean() == pytest.approx(_v(doc, "overall"), abs=1e-5)


def test_shards_merge_to_the_unsharded_result(world) -> None:
    root, data = world["root"], world["data"]
    parts = []
    for k in (1, 2, 3):
        out = root / f"shard{k}.json"
        evaluate(root / "identity", "bbbc021-sim", data_dir=data, seed=0, shard=f"{k}/3", out=out)
        partial = json.loads(out.read_text())["partial"]
        npz = root / f"shard{k}.arrays.npz"  # bound to its document by sha256
        assert partial == {"shard": f"{k}/3", "arrays_sha256": sha256_file(npz)}
        parts.append(out)
    merged = merge_shards(parts, data_dir=data, out=root / "merged.json")
    whole = world["results"]["identity"]
    # the set-level held-out metrics are recomputed from the merged arrays: equal too
    assert whole["metrics"]["retrieval_map"]["value"] is not None
    assert whole["metrics"]["coverage"]["value"] is not None
    for key in ("metrics", "per_moa", "per_compound", "reference", "fid_detail", "set_detail"):
        assert merged[key] == whole[key], key
    for name in ("fid_o", "kid_o"):  # the bootstrap intervals over images, exactly
        assert merged["metrics"][name]["ci"] == whole["metrics"][name]["ci"], name
        assert merged["metrics"][name]["n_boot"] == whole["metrics"][name]["n_boot"] == 1000
    assert merged["metrics"]["fid_c"]["small_n"] == whole["metrics"]["fid_c"]["small_n"]
    assert merged["fid_detail"]["model"]["intervals"] == whole["fid_detail"]["model"]["intervals"]
    for key in ("overall_components", "overall_comparable", "metrics_not_computed"):
        assert merged[key] == whole[key], key
    assert merged["images"]["sha256"] == whole["images"]["sha256"]
    assert merged["per_image_sha256"] == whole["per_image_sha256"]  # the same table, byte for byte
    assert merged["per_image_sha256"] == sha256_file(root / "merged.per_image.csv")
    assert merged["complete"] is True
    with pytest.raises(Exception, match="do not cover"):
        merge_shards(parts[:2], data_dir=data)


def test_missing_tasks_make_an_incomplete_result(world, tmp_path: Path) -> None:
    half = tmp_path / "half"
    half.mkdir()
    tasks = world["table"]["task_id"].tolist()
    for t in tasks[::2]:
        np.save(half / f"{t}.npy", np.load(world["root"] / "real" / f"{t}.npy"))
    doc = evaluate(half, "bbbc021-sim", data_dir=world["data"], seed=0, fid=False)
    assert doc["complete"] is False
    assert doc["images"]["missing_tasks"] == len(tasks) - len(tasks[::2])
    assert np.isnan(doc["metrics"]["moa"]["value"] or np.nan)  # no Inception pass: no moa


def test_a_few_images_give_absent_metrics_not_a_crash(world, tmp_path: Path) -> None:
    """Three tasks (too few for the k-NN metrics and the split halves) and one (too few for any
    FID): the result is written, every value that cannot be computed is null with the reason,
    and the document has no NaN and follows the schema."""
    from cellbench.metrics.registry import TOO_FEW
    from cellbench.results.schema import result_problems

    table = world["table"].sort_values("task_id")
    for n in (3, 1):
        part = table.iloc[:n]
        images = tmp_path / f"n{n}"
        images.mkdir()
        for t in part["task_id"]:
            np.save(images / f"{t}.npy", np.load(world["root"] / "real" / f"{t}.npy"))
        write_protocol(part, tmp_path / f"n{n}.csv")
        out = tmp_path / f"n{n}.json"
        with warnings.catch_warnings():  # too few images is reported, not warned about
            warnings.simplefilter("error", RuntimeWarning)
            evaluate(
                images,
                "bbbc021-sim",
                data_dir=world["data"],
                protocol=tmp_path / f"n{n}.csv",
                out=out,
            )
        doc = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the file"))
        assert result_problems(doc) == [], n
        m, ref = doc["metrics"], doc["reference"]["metrics"]
        assert m["precision"] == {**m["precision"], "value": None, "absent": TOO_FEW}
        for name in ("fid_c", "kid_c"):  # no compound has 2 images on both sides
            assert ref[name]["value"] is None and "no compound" in ref[name]["absent"], n
        assert doc["metrics"]["overall"]["value"] is not None
        if n == 3:  # some resamples are one image repeated: no KID_o interval
            assert "ci" in m["fid_o"] and "ci" not in m["kid_o"]
    assert m["fid_o"]["value"] is None and "fewer than 2" in m["fid_o"]["absent"]  # n = 1


def test_cli_eval_json_and_errors(world, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    res = run_cli(
        "eval",
        str(world["root"] / "identity"),
        "--dataset",
        "bbbc021-sim",
        "--data-dir",
        str(world["data"]),
        "--protocol",
        str(world["root"] / "protocol.csv"),
        "--out",
        str(out),
        "--json",
        "--no-fid",
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc == json.loads(out.read_text())
    assert doc["fid_computed"] is False and "fid_o" not in doc["metrics"]
    assert doc["protocol"]["built"] is False
    assert doc["protocol"]["name"] == "cellflux-iid"  # the file, identified by its content
    assert (tmp_path / "r.per_image.csv").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = run_cli(
        "eval",
        str(empty),
        "--data-dir",
        str(world["data"]),
        "--out",
        str(tmp_path / "bad.json"),
        "--no-fid",
    )
    assert bad.returncode == 2 and "no usable image" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad.json").exists()


def test_set_distances_have_intervals_and_small_n_record(world) -> None:
    doc = world["results"]["identity"]  # not "wrong": its images are the real set permuted, FID 0
    for name in ("fid_o", "kid_o"):
        m = doc["metrics"][name]
        assert m["ci"][0] <= m["value"] <= m["ci"][1] and m["ci"][0] < m["ci"][1], name
        assert (m["method"], m["resampled"]) == (
            "linearised" if name == "fid_o" else "exact",
            "generated",
        )
    small = doc["metrics"]["fid_c"]["small_n"]
    per = doc["fid_detail"]["model"]["per_compound"]
    sizes = [min(v["n_gen"], v["n_real"]) for v in per.values()]
    assert small["compounds"] == len(per) and small["min_images"] == min(sizes)
    from cellbench.metrics.fid import FID_C_MIN_IMAGES

    assert small["below"] == sum(k < FID_C_MIN_IMAGES for k in sizes) > 0  # tiny: few images
    assert small["warning"].startswith(f"FID_c averages {small['below']} of {len(per)}")
    for key in ("fid_o", "fid_c", "kid_o", "kid_c"):  # the reference row has no interval
        assert set(doc["reference"]["metrics"][key]) == {"value"}
    assert doc["overall_comparable"] is True and doc["metrics_not_computed"] == []
    assert doc["overall_components"] == list(doc["overall_weights"])


def test_no_fid_says_what_it_drops(world, tmp_path: Path) -> None:
    """--no-fid: moa, moa_accuracy and the Inception metrics absent, overall labelled."""
    from cellbench.cli.scoring import results_markdown
    from cellbench.leaderboard.build import overall_comparable

    doc = evaluate(
        world["root"] / "identity", "bbbc021-sim", data_dir=world["data"], seed=0, fid=False
    )
    assert doc["overall_comparable"] is False and overall_comparable(doc) is False
    assert doc["overall_components"] == [
        "nuc_in_cyto",
        "roundness",
        "nuc_size",
        "cyto_size",
        "nuc_count",
        "cyto_count",
    ]
    assert {"moa", "moa_accuracy", "fid_o", "fid_c", "kid_o", "kid_c"} <= set(
        doc["metrics_not_computed"]
    )
    assert "overall" not in doc["metrics_not_computed"]
    # overall is the weighted sum of the six mask rewards, per image
    table = pd.read_csv(world["root"] / "identity.per_image.csv")  # the full run's rewards
    weights = doc["overall_weights"]
    six = sum(weights[c] * table[c] for c in doc["overall_components"])
    assert doc["metrics"]["overall"]["value"] == pytest.approx(six.mean(), abs=1e-5)
    with_moa = world["results"]["identity"]["metrics"]["overall"]["value"]
    assert doc["metrics"]["overall"]["value"] != pytest.approx(with_moa, abs=1e-3)
    md = results_markdown(doc)
    assert "overall (without moa: NOT comparable)" in md
    assert "not computed (--no-fid)" in md  # the moa and moa_accuracy rows
    assert "scored with --no-fid (no Inception): not computed: moa, moa_accuracy" in md
    assert "FID_o" not in md.split("\n\n")[1]  # no distance row in the table


def test_no_fid_overall_is_not_compared_with_a_full_one(world) -> None:
    from cellbench.compare import check_comparable
    from cellbench.errors import CellbenchError

    doc = evaluate(
        world["root"] / "identity", "bbbc021-sim", data_dir=world["data"], seed=0, fid=False
    )
    with pytest.raises(CellbenchError, match="overall components"):
        check_comparable(world["results"]["real"], doc, "nofid.json")
    check_comparable(world["results"]["real"], world["results"]["noise"], "noise.json")


def test_reward_model_matches_eval(world) -> None:
    import torch

    from cellbench.data.torch_dataset import to_model_range
    from cellbench.scoring import RewardModel

    model = RewardModel("bbbc021-sim", data_dir=world["data"])
    table = world["table"].iloc[:8]
    crops = np.stack([world["ds"].load_crop(k) for k in table["target_key"]])
    out = model(to_model_range(crops), table["moa"].tolist())
    per_image = pd.read_csv(world["root"] / "real.per_image.csv").set_index("task_id")
    for m in (*REWARDS, "overall"):
        assert isinstance(out[m], torch.Tensor) and out[m].shape == (8,)
        np.testing.assert_allclose(
            out[m].numpy(), per_image.loc[table["task_id"], m].to_numpy(), rtol=1e-5, atol=1e-5
        )


def test_every_written_document_validates_against_the_published_schema(world) -> None:
    from cellbench.results.schema import result_problems

    for name in world["results"]:
        doc = json.loads((world["root"] / f"{name}.json").read_text())
        assert result_problems(doc) == [], name
    broken = json.loads((world["root"] / "identity.json").read_text())
    broken["metrics"]["overall"]["extra"] = 1  # the estimate is a closed object
    broken["surprise"] = True
    assert sorted(result_problems(broken)) == [
        ("/", "unknown field 'surprise'"),
        ("/metrics/overall", "unknown field 'extra'"),
    ]


def test_sharded_best_of_n_merge_equals_the_unsharded_result(world) -> None:
    """Shards of a best-of-N folder merge to the unsharded document, every field included."""
    import shutil

    from cellbench.data.bbbc021 import open_dataset
    from cellbench.generation import GENERATION_FILE, generation_record
    from cellbench.generators import get_generator_class
    from cellbench.results.schema import result_problems

    root, data = world["root"], world["data"]
    folder = root / "best-of-4"
    shutil.copytree(root / "identity", folder)
    gen = get_generator_class("identity").load(open_dataset("bbbc021-sim", data))
    record = generation_record(gen, model="identity", seed=0, batch_size=64, best_of_n=4)
    (folder / GENERATION_FILE).write_text(json.dumps(record))
    whole = evaluate(folder, "bbbc021-sim", data_dir=data, seed=0, out=root / "bon.json")
    parts = []
    for k in (1, 2):
        out = root / f"bon-shard{k}.json"
        evaluate(folder, "bbbc021-sim", data_dir=data, seed=0, shard=f"{k}/2", out=out)
        parts.append(out)
    merged = merge_shards(parts, data_dir=data, out=root / "bon-merged.json")
    assert whole["best_of_n"] == merged["best_of_n"] == 4
    assert merged["generation"] == whole["generation"] == json.loads(json.dumps(record))
    assert merged["merged_from"] == [str(p) for p in parts]
    assert set(merged) - {"merged_from"} == set(whole)
    for key in set(whole) - {"wall_time_s", "command"}:
        assert merged[key] == whole[key], key
    merged_csv = (root / "bon-merged.per_image.csv").read_text()
    assert merged_csv == (root / "bon.per_image.csv").read_text()
    for path in (root / "bon.json", *parts, root / "bon-merged.json"):
        assert result_problems(json.loads(path.read_text())) == [], path


def test_changed_crops_under_the_same_index_change_the_digest_and_the_reference(
    world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trial of issue 18: every target crop overwritten with its control's bytes, the index
    CSV kept, `identity` scored again with a warm cache: the digest changes and the reference row
    is recomputed (it now equals `identity`'s own scores), not served stale."""
    import shutil

    from cellbench.data.bbbc021 import BBBC021Dataset

    data = tmp_path / "data"
    shutil.copytree(world["data"] / "bbbc021-sim", data / "bbbc021-sim")
    ds = BBBC021Dataset(data / "bbbc021-sim", world["ds"].card)
    images = world["root"] / "identity"
    # a cache of its own: under `make test` other workers write to the shared one meanwhile
    monkeypatch.setenv("CELLBENCH_CACHE_DIR", str(tmp_path / "cache"))
    before = evaluate(images, "bbbc021-sim", data_dir=data, seed=0, fid=False)  # warms the cache
    cache = tmp_path / "cache" / "reference-features"
    cached = set(cache.glob("*.npz"))
    assert cached
    for r in world["table"].itertuples():
        shutil.copyfile(ds.crop_path(r.control_key), ds.crop_path(r.target_key))
    after = evaluate(images, "bbbc021-sim", data_dir=data, seed=0, fid=False)
    assert after["dataset"]["index_sha256"] == before["dataset"]["index_sha256"]
    assert after["dataset"]["crops_sha256"] != before["dataset"]["crops_sha256"]
    assert after["protocol"]["sha256"] == before["protocol"]["sha256"]
    new_entries = set(cache.glob("*.npz")) - cached
    assert len(new_entries) == 1 and cached <= set(cache.glob("*.npz"))  # old one not reused
    for m in ("overall", "nuc_count", "roundness"):
        ref_before = before["reference"]["metrics"][m]["value"]
        ref_after = after["reference"]["metrics"][m]["value"]
        assert ref_after != ref_before, m
        # the targets are now the controls: the reference row is identity's own row
        assert ref_after == pytest.approx(after["metrics"][m]["value"], rel=1e-12, abs=1e-12), m
    assert after["metrics"]["overall"] == before["metrics"]["overall"]  # same images, same scores

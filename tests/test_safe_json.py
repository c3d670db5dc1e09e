"""Untrusted JSON is read through cellbench.io.loads_json: nesting deeper than MAX_JSON_DEPTH is
refused before parsing (no RecursionError), and NaN, Infinity and numbers that overflow to
infinity (1e999) are refused. Every reader of an untrusted document is covered below with both
classes; each answer is one CellbenchError line naming the file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cellbench.errors import CellbenchError
from cellbench.io import MAX_JSON_DEPTH, json_depth, loads_json

DEEP = "[" * 100_000 + "]" * 100_000
DEEP_OBJECT = '{"a": ' * 50_000 + "1" + "}" * 50_000
HOSTILE = {
    "deep-array": (DEEP, "nested 100000 levels deep"),
    "deep-object": (DEEP_OBJECT, "nested 50000 levels deep"),
    "nan": ('{"schema": NaN}', "NaN is not a finite number"),
    "infinity": ('{"schema": -Infinity}', "-Infinity is not a finite number"),
    "overflow": ('{"schema": 1e999}', "1e999 is not a finite number"),
}


def test_depth_is_counted_outside_strings_without_recursion() -> None:
    assert json_depth('{"a": [1, {"b": "[[[{{{\\"]]]"}]}') == 3
    assert json_depth(DEEP) == 100_000  # far past the interpreter's recursion limit
    assert sys.getrecursionlimit() < 100_000
    assert loads_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH) is not None
    with pytest.raises(ValueError, match=f"more than the {MAX_JSON_DEPTH} allowed"):
        loads_json("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1))


def test_finite_numbers_and_strings_that_look_like_constants_pass() -> None:
    doc = loads_json('{"a": 1e308, "b": -2.5e-300, "c": "NaN", "d": "Infinity", "e": 10}')
    assert doc == {"a": 1e308, "b": -2.5e-300, "c": "NaN", "d": "Infinity", "e": 10}
    assert json.loads(DEEP[:10] + DEEP[-10:]) == loads_json(DEEP[:10] + DEEP[-10:])


# ------------------------------------------------------------------------------ every reader
def _generation(tmp: Path, text: str) -> None:
    from cellbench.generation import GENERATION_FILE, read_generation_record

    (tmp / GENERATION_FILE).write_text(text)
    read_generation_record(tmp)


def _result(tmp: Path, text: str) -> None:
    from cellbench.compare import load_result

    (tmp / "results.json").write_text(text)
    load_result(tmp / "results.json")


def _shard(tmp: Path, text: str) -> None:
    from cellbench.evaluation import merge_shards

    (tmp / "part.json").write_text(text)
    merge_shards([tmp / "part.json", tmp / "part.json"])


def _manifest(tmp: Path, text: str) -> None:
    from cellbench.artifacts.manifest import MANIFEST_NAME, read_manifest

    (tmp / MANIFEST_NAME).write_text(text)
    read_manifest(tmp)


def _reference(tmp: Path, text: str) -> None:
    from cellbench.features.reference import load_reference

    (tmp / "reference_classical.json").write_text(text)
    load_reference(tmp / "reference_classical.json")


def _classifier_card(tmp: Path, text: str) -> None:
    from cellbench.features.classifier import CARD_NAME, WEIGHTS_NAME, load_classifier

    (tmp / WEIGHTS_NAME).write_bytes(b"")
    (tmp / CARD_NAME).write_text(text)
    load_classifier(tmp)


def _sim_config(tmp: Path, text: str) -> None:
    from cellbench.data.bbbc021 import BBBC021Dataset
    from cellbench.data.catalog import get_card
    from tests.conftest import build_mini_dataset

    root = build_mini_dataset(tmp / "mini")
    (root / "sim_config.json").write_text(text)
    _ = BBBC021Dataset(root, get_card("bbbc021")).sim_config


def _checkpoint_config(tmp: Path, text: str) -> None:
    from cellbench_baselines.checkpoint import run_record

    (tmp / "config.json").write_text(text)
    run_record(tmp)


def _training_config(tmp: Path, text: str) -> None:
    from cellbench_baselines.cellflux import CellFlux

    (tmp / "train.json").write_text(text)
    CellFlux.training_config(str(tmp / "train.json"))


def _class_list(tmp: Path, text: str) -> None:
    from cellbench_baselines.phendiff_release import CLASSES_FILE, read_classes

    (tmp / CLASSES_FILE).write_text(text)
    read_classes(tmp, 2)


READERS: dict[str, tuple[Callable[[Path, str], None], str]] = {
    "generation.json": (_generation, "generation.json"),
    "results.json (compare)": (_result, "results.json"),
    "shard results.json (eval merge)": (_shard, "part.json"),
    "artifact MANIFEST.json": (_manifest, "MANIFEST.json"),
    "reference statistics": (_reference, "reference_classical.json"),
    "classifier card": (_classifier_card, "classifier.json"),
    "sim_config.json": (_sim_config, "sim_config.json"),
    "checkpoint config.json": (_checkpoint_config, "config.json"),
    "training config": (_training_config, "train.json"),
    "PhenDiff classes.json": (_class_list, "classes.json"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_untrusted_reader_refuses_deep_nesting_and_non_finite_numbers(
    tmp_path: Path, reader: str, kind: str
) -> None:
    read, name = READERS[reader]
    text, message = HOSTILE[kind]
    with pytest.raises(CellbenchError) as err:
        read(tmp_path, text)
    line = str(err.value)
    assert message in line and name in line and "\n" not in line

import json

import pytest

from disca.bundle import Bundle
from disca.errors import BundleError


def test_open_checks_presence_and_size(bundle_copy):
    (bundle_copy / "predictor.onnx.data").unlink()
    with pytest.raises(BundleError, match=r"predictor\.onnx\.data is missing"):
        Bundle.open(bundle_copy)


def test_truncated_file_is_caught_without_hashing(bundle_copy):
    data = bundle_copy / "full.onnx.data"
    data.write_bytes(data.read_bytes()[:-100])
    with pytest.raises(BundleError, match=r"full\.onnx\.data has .* bytes, the manifest says"):
        Bundle.open(bundle_copy)


def test_same_size_corruption_needs_verify(bundle_copy):
    data = bundle_copy / "full.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    Bundle.open(bundle_copy)  # sizes match: the cheap check passes
    with pytest.raises(BundleError, match=r"full\.onnx\.data does not match its sha256"):
        Bundle.open(bundle_copy, verify=True)
    assert Bundle.open(bundle_copy).verify_hashes()["full.onnx.data"] is False


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "unreadable or corrupt"),
        ('{"format": "something-else"}', "not a disca bundle manifest"),
        ('{"format": "disca-bundle", "schema_version": 99}', "schema version 99"),
        ('{"format": "disca-bundle", "schema_version": 1, "files": {}}', "required key model is missing"),
    ],
)
def test_bad_manifest(bundle_copy, content, message):
    (bundle_copy / "manifest.json").write_text(content)
    with pytest.raises(BundleError, match=message):
        Bundle.open(bundle_copy)


def test_missing_bundle_and_manifest(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        Bundle.open(tmp_path / "nope")
    with pytest.raises(BundleError, match="manifest.json is missing"):
        Bundle.open(tmp_path)


def test_unknown_precision_names_what_exists(bundle_copy):
    with pytest.raises(BundleError, match=r"no int8 variant of the full graph \(it has fp32, fp16, fp8\)"):
        Bundle.open(bundle_copy).graph_path("full", "int8")


def test_manifest_round_trips_as_plain_json(bundle_copy):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    b = Bundle.open(bundle_copy)
    assert b.ranges.to_dict() == m["ranges"] and b.schedule.to_dict() == m["schedule"]
    assert b.patch == (1, 2, 2) and b.channels == 3 and b.mean_flow

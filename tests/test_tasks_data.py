"""LongBench loading: line order, the 8-field record, and loud errors for anything malformed."""

import json
import re
import shutil
import zipfile

import pytest
from huggingface_hub.errors import LocalEntryNotFoundError
from task_fixtures import FIXTURES

from namm.errors import ConfigError
from tasks import longbench_data
from tasks.longbench_data import RECORD_FIELDS, load_longbench, longbench_dataset, read_records
from tasks.task_config import TaskConfig
from tasks.task_data import check_task_data


def test_fixtures_have_exactly_the_eight_fields():
    for path in FIXTURES.glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            assert sorted(json.loads(line)) == sorted(RECORD_FIELDS), path


def test_records_keep_line_order_and_fields():
    records, source = load_longbench("qasper", FIXTURES)
    assert [r.input for r in records] == ["What dataset do they use?", "Is the model multilingual?"]
    assert records[0].answers == ("Penn Treebank", "PTB") and records[0].all_classes is None
    assert records[0].id == "qasp0000aa55" and records[0].length == 14
    assert source == str(FIXTURES.resolve())
    trec, _ = load_longbench("trec", FIXTURES)
    assert trec[0].all_classes == ("City", "Individual", "Other location", "Date")


def test_missing_file_names_the_path_and_the_fix():
    with pytest.raises(FileNotFoundError, match=r"narrativeqa\.jsonl.*data_dir"):
        load_longbench("narrativeqa", FIXTURES)


@pytest.mark.parametrize(
    "name, message",
    [
        ("malformed", r"line 3: malformed JSON"),
        ("missing_field", r"line 2: missing field\(s\) \['answers'\]"),
        ("blank_line", r"line 2: blank line"),
    ],
)
def test_bad_lines_are_errors_naming_the_line(name, message):
    with pytest.raises(ValueError, match=message):
        read_records(FIXTURES / "broken" / f"{name}.jsonl")


def test_wrong_field_types_are_errors(tmp_path):
    good = json.loads((FIXTURES / "qasper.jsonl").read_text().splitlines()[0])
    for field, value in [("answers", "Penn Treebank"), ("length", "14"), ("all_classes", "City")]:
        path = tmp_path / f"{field}.jsonl"
        path.write_text(json.dumps({**good, field: value}) + "\n")
        with pytest.raises(ValueError, match=f"line 1: .*'{field}'"):
            read_records(path)


def test_hub_archive_is_unzipped_once_into_a_commit_folder(tmp_path, monkeypatch):
    snapshot = tmp_path / "hub" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    with zipfile.ZipFile(snapshot / "data.zip", "w") as archive:
        archive.write(FIXTURES / "qasper.jsonl", "data/qasper.jsonl")
    calls = []

    def fake_download(repo, filename, repo_type, revision, local_files_only=False):
        calls.append((repo, filename, repo_type, "local" if local_files_only else "network"))
        if local_files_only and len(calls) == 1:  # not in the hub cache yet
            raise LocalEntryNotFoundError("not cached")
        return str(snapshot / "data.zip")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    monkeypatch.setattr(longbench_data, "_check_hub_reachable", lambda: None)
    records, source = load_longbench("qasper", cache_dir=tmp_path / "cache")
    assert calls == [
        ("THUDM/LongBench", "data.zip", "dataset", "local"),
        ("THUDM/LongBench", "data.zip", "dataset", "network"),
    ]
    assert source == "hub:THUDM/LongBench@abc123" and len(records) == 2
    assert (tmp_path / "cache" / "abc123" / "qasper.jsonl").is_file()
    assert longbench_data.download_longbench(tmp_path / "cache") == tmp_path / "cache" / "abc123"
    assert calls[-1][-1] == "local"  # the second time, the hub cache's copy: no network


def test_an_unreachable_hub_fails_at_once(monkeypatch):
    def no_host(host, port):
        raise OSError("Name or service not known")

    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    monkeypatch.setattr(longbench_data.socket, "getaddrinfo", no_host)
    with pytest.raises(ConnectionError, match="cannot reach the Hugging Face hub"):
        longbench_data._check_hub_reachable()


# -- through datasets: cached, fingerprinted by the file, streamable ------------------------------------


def copy_fixture(tmp_path, name="qasper"):
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.jsonl").write_text((FIXTURES / f"{name}.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    return folder


def test_a_dataset_is_parsed_once_and_read_again_when_the_file_changes(tmp_path):
    folder = copy_fixture(tmp_path)
    first = longbench_dataset("qasper", folder, tmp_path / "cache")
    again = longbench_dataset("qasper", folder, tmp_path / "cache")
    assert again._fingerprint == first._fingerprint and again.cache_files == first.cache_files
    assert str(tmp_path / "cache" / "datasets") in again.cache_files[0]["filename"]
    assert [longbench_data.record_of(row) for row in first] == read_records(folder / "qasper.jsonl")
    lines = (folder / "qasper.jsonl").read_text(encoding="utf-8").splitlines()
    (folder / "qasper.jsonl").write_text("\n".join([lines[1], lines[0]]) + "\n", encoding="utf-8")
    edited = longbench_dataset("qasper", folder, tmp_path / "cache")
    assert edited._fingerprint != first._fingerprint
    assert edited["input"] == ["Is the model multilingual?", "What dataset do they use?"]


def test_streaming_gives_the_same_rows_without_a_cache(tmp_path):
    folder = copy_fixture(tmp_path, "trec")
    streamed = list(longbench_dataset("trec", folder, tmp_path / "cache", streaming=True))
    assert [longbench_data.record_of(row) for row in streamed] == read_records(folder / "trec.jsonl")
    assert not (tmp_path / "cache" / "datasets").exists()


@pytest.mark.parametrize(
    "name, message",
    [("malformed", r"malformed\.jsonl, line 3: malformed JSON"), ("blank_line", r"blank_line\.jsonl, line 2")],
)
def test_bad_lines_keep_their_message_through_datasets(tmp_path, name, message):
    with pytest.raises(ValueError, match=message):
        longbench_dataset(name, FIXTURES / "broken", tmp_path / "cache")


def test_a_malformed_line_is_named_without_calling_the_task_data_missing(tmp_path):
    """The file is there, one line is bad: the message is that line, not "no data, download data.zip"."""
    shutil.copy(FIXTURES / "broken" / "malformed.jsonl", tmp_path / "qasper.jsonl")
    with pytest.raises(ConfigError) as caught:
        check_task_data(TaskConfig(tasks=["qasper"], data_dir=str(tmp_path)))
    message = str(caught.value)
    assert re.search(r"qasper\.jsonl, line 3: malformed JSON", message) and "Fix or remove that line" in message
    assert "has no data" not in message and "data.zip" not in message and "download" not in message

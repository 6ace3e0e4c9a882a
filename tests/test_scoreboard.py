"""The scoreboard: the artifact catalogue (data/artifacts.json), its checks, and the board that
joins it with the verdict rows the executed chapters stored (fatlib.scoreboard)."""

import json
from pathlib import Path

import nbformat
import pytest

from fatlib import book, chapter, scoreboard, verdicts

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"paper": "wong2020", "artifact": "wong2020 Table 1", "kind": "table",
        "title": "init and step size", "chapter": "book/wong2020/table1_init_step"}


def _catalogue(tmp_path, *entries):
    path = tmp_path / "artifacts.json"
    path.write_text(json.dumps(list(entries)))
    return path


def _artifact(artifact, chapter=None, kind=None):
    paper = artifact.split(" ", 1)[0]
    kind = kind or ("claim" if " claim: " in artifact else
                    scoreboard.ID_WORDS[artifact.split(" ")[1]])
    return scoreboard.Artifact(paper, artifact, kind, "what it shows", chapter)


def _reduced(artifact, passed=True):
    rule = verdicts.survives([40.0 if passed else 1.0], 1000, name="FGSM-RS")
    return verdicts.check(artifact, "FGSM-RS does not collapse", rule, paper="43.78%",
                          scale="quick: cnn1, 10 epochs", reason="too few epochs")


# --------------------------------------------------------------------------- the catalogue

def test_the_committed_catalogue_loads_and_names_existing_chapters_of_the_toc():
    artifacts = scoreboard.load_artifacts()
    assert {a.paper for a in artifacts} == set(scoreboard.PAPERS)
    listed = {p.relative_to(ROOT).with_suffix("").as_posix() for p in book.toc_files(ROOT)}
    missing = sorted({a.chapter for a in artifacts if a.chapter} - listed)
    assert not missing, f"chapters named in data/artifacts.json but not in _toc.yml: {missing}"


def test_the_catalogue_has_every_kind_and_names_the_chapters():
    artifacts = scoreboard.load_artifacts()
    assert {a.kind for a in artifacts} == set(scoreboard.KINDS)
    l2 = {a.artifact: a.chapter for a in artifacts if a.paper == "l2fast"}
    assert l2["l2fast Table I"] == "book/l2fast/timing"
    assert l2["l2fast Figure 5"] == "book/l2fast/robust_features"
    golgooni = {a.artifact: a.chapter for a in artifacts if a.paper == "golgooni2021"}
    assert golgooni["golgooni2021 Table 1"] == "book/golgooni2021/table1"
    assert golgooni["golgooni2021 Table 11"] == "book/golgooni2021/more_settings"
    assert golgooni["golgooni2021 Table 5"] == golgooni["golgooni2021 Appendix A"] == \
        "book/golgooni2021/table1"
    ids = {a.artifact for a in artifacts}
    for expected in ("wong2020 Table 5", "andriushchenko2020 Lemma 2", "golgooni2021 Table 11",
                     "l2fast Table I", "wong2020 Appendix B", "andriushchenko2020 Figure 8"):
        assert expected in ids


@pytest.mark.parametrize("change, message", [
    ({"kind": "plot"}, "kind one of"),
    ({"paper": "madry2018", "artifact": "madry2018 Table 1"}, "paper must be one of"),
    ({"artifact": "Table 1"}, "must start with the paper"),
    ({"artifact": "wong2020 Tab 1"}, "must be 'wong2020 <Table"),
    ({"artifact": "wong2020 Table"}, "must be 'wong2020 <Table"),
    ({"kind": "figure"}, "a 'Table' id has kind 'table'"),
    ({"artifact": "wong2020 claim: "}, "a 'claim: ' id needs"),
    ({"chapter": "book/wong2020/table1_init_step.ipynb"}, "without suffix"),
    ({"chapter": "wong2020/table1_init_step"}, "without suffix"),
    ({"title": ""}, "non-empty texts"),
    ({"extra": 1}, "exactly the keys"),
])
def test_a_malformed_entry_is_refused_with_its_position_and_id(tmp_path, change, message):
    path = _catalogue(tmp_path, GOOD, {**GOOD, "artifact": "wong2020 Table 2", **change})
    with pytest.raises(ValueError, match=message) as err:
        scoreboard.load_artifacts(path)
    assert "entry 1" in str(err.value)


def test_a_duplicate_id_a_non_list_and_bad_json_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"entry 1 \(wong2020 Table 1\): the id is given twice"):
        scoreboard.load_artifacts(_catalogue(tmp_path, GOOD, GOOD))
    (tmp_path / "obj.json").write_text(json.dumps(GOOD))
    with pytest.raises(ValueError, match="JSON list"):
        scoreboard.load_artifacts(tmp_path / "obj.json")
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(ValueError, match="not valid JSON"):
        scoreboard.load_artifacts(tmp_path / "bad.json")
    claim = {**GOOD, "artifact": "wong2020 claim: fast", "kind": "claim", "chapter": None}
    assert scoreboard.load_artifacts(_catalogue(tmp_path, claim))[0].chapter is None


# --------------------------------------------------------------------------- matching

def test_the_longest_id_wins_and_an_id_ends_at_a_word_boundary():
    ids = ["wong2020 Table 1", "wong2020 Table 10", "andriushchenko2020 Appendix A",
           "andriushchenko2020 Appendix A.1"]
    assert scoreboard.match("wong2020 Table 1, FGSM zero init", ids) == "wong2020 Table 1"
    assert scoreboard.match("wong2020 Table 10: time", ids) == "wong2020 Table 10"
    assert scoreboard.match("wong2020 Table 1.", ids) == "wong2020 Table 1"
    assert scoreboard.match("wong2020 Table 11", ids) is None
    assert scoreboard.match("andriushchenko2020 Appendix A.1 proof", ids).endswith("A.1")
    assert scoreboard.match("andriushchenko2020 Appendix A.2", ids) is None
    assert scoreboard.match("Table 1 of wong2020", ids) is None


def test_chapter_keys_drop_the_book_folder_and_the_suffix():
    assert scoreboard.chapter_key("book/wong2020/table1_init_step") == "wong2020/table1_init_step"
    assert scoreboard.chapter_key("wong2020/imagenet.ipynb") == "wong2020/imagenet"


# --------------------------------------------------------------------------- the board

def test_the_board_gives_every_artifact_a_line_and_loses_no_row():
    artifacts = [_artifact("wong2020 Table 1", "book/wong2020/table1_init_step"),
                 _artifact("wong2020 Table 4", "book/wong2020/imagenet"),
                 _artifact("golgooni2021 Table 1")]
    rows = {"wong2020/table1_init_step": [_reduced("wong2020 Table 1, FGSM-RS"),
                                          _reduced("wong2020 Table 1, FGSM", passed=False).row()],
            "opening/threat_models": [_reduced("wong2020 Table 2, MNIST")]}
    lines = scoreboard.board(artifacts, rows)
    assert [line["status"] for line in lines] == [
        verdicts.REDUCED, verdicts.DIFFERS, scoreboard.NO_VERDICT, scoreboard.NOT_IN_BOOK,
        verdicts.REDUCED]
    first = lines[0]
    assert first["chapter"] == "wong2020/table1_init_step" and first["paper"] == "wong2020"
    assert first["artifact"] == "wong2020 Table 1, FGSM-RS: FGSM-RS does not collapse"
    assert first["paper vs ours"].startswith("43.78% vs ") and first["scale"].startswith("quick")
    assert lines[1]["verdict"].startswith("differs: ")
    assert lines[2]["chapter"] == "wong2020/imagenet" and lines[3]["chapter"] == ""
    stray = lines[4]
    assert not stray["catalogued"] and stray["chapter"] == "opening/threat_models"
    assert all(line["catalogued"] for line in lines[:4])


def test_counts_cover_every_status():
    lines = scoreboard.board([_artifact("l2fast Figure 2")], {})
    assert scoreboard.counts(lines) == {**{s: 0 for s in scoreboard.STATUSES},
                                        scoreboard.NOT_IN_BOOK: 1}
    assert list(scoreboard.counts([])) == list(scoreboard.STATUSES)


def test_the_table_links_chapters_escapes_text_and_colours_rows():
    lines = scoreboard.board([_artifact("wong2020 Table 1", "book/wong2020/table1_init_step")],
                             {"wong2020/table1_init_step": [_reduced("wong2020 Table 1 <b>")]})
    html = scoreboard.BoardTable(lines)._repr_html_()
    assert '<a href="wong2020/table1_init_step.html">wong2020/<wbr>table1_init_step</a>' in html
    assert "&lt;b&gt;" in html and "<b>" not in html
    assert "background:#eaf6d5" in html
    assert "wong2020/table1_init_step" in repr(scoreboard.BoardTable(lines))
    counted = scoreboard.counts_table(lines)._repr_html_()
    assert "<th style='text-align:left'>rows</th>" in counted
    assert "fatlib-board" in html and "fatlib-board" not in counted  # fatlib.css fits the board


# --------------------------------------------------------------------------- executed notebooks

def _executed(folder: Path, name: str, bundle: dict | None, metadata: dict | None = None):
    nb = nbformat.v4.new_notebook(metadata=metadata or {})
    cell = nbformat.v4.new_code_cell("x", execution_count=1)
    cell.outputs = [nbformat.v4.new_output("display_data", data=bundle)] if bundle else []
    nb.cells = [cell]
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / name)


def test_the_board_reads_the_closing_tables_of_executed_notebooks(tmp_path):
    table = chapter.closing_table([_reduced("wong2020 Table 1, FGSM-RS")],
                                  chapter="wong2020/table1_init_step")
    _executed(tmp_path, "wong2020/table1_init_step.ipynb", table._repr_mimebundle_())
    _executed(tmp_path, "wong2020/imagenet.ipynb", {"text/plain": "no closing table"})
    _executed(tmp_path, "scoreboard.ipynb", None, {"fatlib": {"execute_last": True}})
    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "not_run.ipynb")
    assert scoreboard.executed_chapters(tmp_path) == ["wong2020/imagenet",
                                                      "wong2020/table1_init_step"]
    artifacts = [_artifact("wong2020 Table 1", "book/wong2020/table1_init_step"),
                 _artifact("wong2020 Table 4", "book/wong2020/imagenet")]
    lines = scoreboard.board(artifacts, chapter.collect_rows(tmp_path))
    assert [line["status"] for line in lines] == [verdicts.REDUCED, scoreboard.NO_VERDICT]


def test_the_committed_book_has_no_executed_chapter():
    assert scoreboard.executed_chapters(ROOT / "book") == []
    assert chapter.collect_rows(ROOT / "book") == {}

"""Captions (OVSegmentor, OVSeg §3.2): reading caption files, visual entities of hand-written captions,
per-image class restrictions, `vocab --from-captions`, and Stage 1 voting among allowed classes only."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from conftest import blocks_image
from ovlabel.captions import captions_to_classes, entity_vocabulary, read_captions
from ovlabel.cli import app
from ovlabel.entities import EntityMatcher, display_names, lemma, words
from ovlabel.errors import OvlabelError
from ovlabel.stages.detect import vote_classes
from ovlabel.vocab import load_vocabulary

runner = CliRunner()


def terms(caption, **kw):
    m = EntityMatcher(parser=None, **kw)
    return [display_names().get(m.entity(t), m.entity(t)) for t in m.terms_of(caption)]


def test_plurals_synonyms_stop_words_and_longest_terms():
    assert lemma("men") == "man" and lemma("shelves") == "shelf" and lemma("buses") == "bus" and lemma("leaves") == "leaf"
    assert lemma("grass") == "grass" and lemma("skateboarders") == "skateboarder"
    assert terms("Two men riding bikes past the buses.") == ["person", "bicycle", "bus"]
    assert terms("A teddy bear next to a hot dog and a bear") == ["teddy bear", "hot dog", "bear"]
    assert terms("A view of the sea at night, a kitten in the background") == ["sea", "cat"]  # stop words gone
    assert terms("Chests of drawers; T-shirts and TV monitors") == ["chest of drawers", "shirt", "tv"]
    assert terms("") == [] and terms("   ...  ") == []


def test_unicode_captions():
    assert words("ＣＡＴＳ on a café’s SOFA") == ["cats", "on", "a", "café", "sofa"]  # NFKC, casefold, curly 's
    assert terms("ＣＡＴＳ on a café’s SOFA") == ["cat", "couch"]
    assert terms("Ein Hund 🐕 und zwei Katzen") == []  # no English entity: nothing invented
    # non-ASCII words match as written: LemmInflect's English rules are not applied to them
    assert terms("une crème brûlée et des crèmes brûlées", extra=("Crème Brûlée",)) == ["crème brûlée"]


def test_an_installed_parser_keeps_nouns_only_and_finds_new_ones():
    def nlp(text):  # the interface of a spaCy pipeline: tokens with .text and .pos_
        tags = {"an": "DET", "orange": "ADJ", "shirt": "NOUN", "and": "CCONJ", "teapot": "NOUN", "oranges": "NOUN"}
        return [SimpleNamespace(text=w, pos_=tags.get(w, "X")) for w in text.split()]

    assert terms("an orange shirt and teapot") == ["orange", "shirt"]  # offline: orange the fruit, no teapot
    m = EntityMatcher(parser=nlp)
    assert m.terms_of("an orange shirt and teapot") == ["shirt", "teapot"]
    assert m.terms_of("oranges") == ["orange"]


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def test_reading_json_lines_and_csv(tmp_path):
    jl = write(tmp_path / "c.jsonl", '\ufeff{"image": "a/1.jpg", "caption": "a dog"}\n\n{"file_name": ".\\\\b.png", "caption": null}\n')
    rows = read_captions(jl)
    assert [(r.image, r.caption, r.line) for r in rows] == [("a/1.jpg", "a dog", 1), ("b.png", "", 3)]
    csv = write(tmp_path / "c.csv", '\ufeffImage,Caption\na/1.jpg,"two cats, one sofa"\nb.png,\n')
    assert [(r.image, r.caption, r.line) for r in read_captions(csv)] == [("a/1.jpg", "two cats, one sofa", 2), ("b.png", "", 3)]
    tsv = write(tmp_path / "c.tsv", "file\tcaption\nx.jpg\ta bus\n")
    assert read_captions(tsv)[0].caption == "a bus"


@pytest.mark.parametrize("name, text, message", [
    ("bad.jsonl", '{"image": "a.jpg", "caption": "x"}\n{"image": "b.jpg", caption}\n', "bad.jsonl' line 2: not a JSON object"),
    ("nocap.jsonl", '{"image": "a.jpg", "text": "x"}\n', "line 1: no 'caption' field"),
    ("noimg.jsonl", '{"caption": "x"}\n', "line 1: no image"),
    ("num.jsonl", '{"image": "a.jpg", "caption": 3}\n', "line 1: the caption must be text"),
    ("hdr.csv", "path,text\na.jpg,x\n", "hdr.csv' line 1: the header"),
    ("short.csv", "image,caption\na.jpg,x\nb.jpg\n", "short.csv' line 3: 1 columns"),
    ("what.txt", "a.jpg a dog\n", "unknown format"),
])
def test_bad_caption_files_name_file_and_line(tmp_path, name, text, message):
    with pytest.raises(OvlabelError, match=message.replace("(", r"\(")):
        read_captions(write(tmp_path / name, text))


def test_non_utf8_captions_name_the_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"image": "a.jpg", "caption": "x"}\n{"image": "b.jpg", "caption": "caf\xe9"}\n')
    with pytest.raises(OvlabelError, match="latin.jsonl' line 2: not UTF-8"):
        read_captions(path)


def test_captions_to_classes_and_the_rule_for_images_without_one(tmp_path):
    path = write(tmp_path / "caps.jsonl", "\n".join(json.dumps(r) for r in [
        {"image": "x/dogs.jpg", "caption": "Two puppies asleep on a sofa."},
        {"image": "x/dogs.jpg", "caption": "A dog and a kitten"},  # several captions: the union
        {"image": "tables.jpg", "caption": "people around a table"},
        {"image": "empty.jpg", "caption": "  "},
        {"image": "view.jpg", "caption": "a view of the hills at night"},
        {"image": "elsewhere.jpg", "caption": "a cat"},  # not an input image
    ]) + "\n")
    voc = load_vocabulary("voc")  # diningtable, sofa, person, dog, cat, ...
    rels = ["x/dogs.jpg", "y/tables.jpg", "empty.jpg", "view.jpg", "nocaption.jpg"]
    out = captions_to_classes(path, voc, rels, parser=None)
    names = {r: [voc.names[i] for i in out[r]] for r in rels}
    assert names["x/dogs.jpg"] == ["cat", "dog", "sofa"]
    assert names["y/tables.jpg"] == ["diningtable", "person"]  # by unique file name; "table" -> diningtable
    assert out["empty.jpg"] == out["view.jpg"] == out["nocaption.jpg"] == list(range(20))  # rule "all"
    assert out.reasons == {"x/dogs.jpg": "caption", "y/tables.jpg": "caption", "empty.jpg": "empty caption",
                           "view.jpg": "no known class", "nocaption.jpg": "no caption"}
    rec = out.to_json()
    assert rec["missing"] == "all" and rec["rows"] == 6 and rec["unmatched_rows"] == 1 and rec["parser"] is None
    assert rec["reasons"] == {"caption": 2, "empty caption": 1, "no caption": 1, "no known class": 1} and len(rec["sha256"]) == 64
    none = captions_to_classes(path, voc, rels, missing="none", parser=None)
    assert none["empty.jpg"] == none["nocaption.jpg"] == [] and none["x/dogs.jpg"] == out["x/dogs.jpg"]
    stuff = load_vocabulary("coco-stuff")  # has both "table" and "dining table": the exact name wins
    assert [stuff.names[i] for i in captions_to_classes(path, stuff, rels, parser=None)["y/tables.jpg"]] == ["person", "table"]
    with pytest.raises(OvlabelError, match="'some'"):
        captions_to_classes(path, voc, rels, missing="some")


def test_vocab_from_captions(tmp_path):
    path = write(tmp_path / "caps.csv", "image,caption\n" + "\n".join([
        "1.jpg,Two dogs and a dog on a couch",  # counted once per caption
        "2.jpg,a puppy on the grass",
        "3.jpg,a man walking his dog",
        "4.jpg,boats on the ocean at night",
        "5.jpg,",
    ]) + "\n")
    assert entity_vocabulary(path, top=3, parser=None) == [("dog", 3), ("boat", 1), ("couch", 1)]
    res = runner.invoke(app, ["vocab", "--from-captions", str(path), "--top", "100", "--out", str(tmp_path / "v.txt")])
    assert res.exit_code == 0, res.output
    assert "in 4 captions" in res.output and "      3  dog" in res.output
    voc = load_vocabulary(str(tmp_path / "v.txt"))
    assert voc.names == ["dog", "boat", "couch", "grass", "person", "sea"]
    bad = runner.invoke(app, ["vocab", "--from-captions", str(path), "--top", "0"])
    assert bad.exit_code == 2 and "--top 0" in bad.output


def test_crops_vote_among_the_allowed_classes_only():
    text = torch.eye(3)
    crops = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 0, 1.0]])
    votes, present = vote_classes(crops, text, 1)
    assert votes.tolist() == [2, 0, 1] and present.tolist() == [0, 2]
    votes, present = vote_classes(crops, text, 1, allowed=[1, 2])
    assert votes.tolist() == [0, 2, 1] and present.tolist() == [1, 2]
    votes, present = vote_classes(crops, text, 1, allowed=[])
    assert votes.tolist() == [0, 0, 0] and present.tolist() == []
    with pytest.raises(ValueError, match="allowed class indices"):
        vote_classes(crops, text, 1, allowed=[3])


def test_stage1_labels_each_image_with_its_allowed_classes():
    from test_stage12 import BLUE, GREEN, RED, make_stage1

    stage, _, _ = make_stage1("fmbseg")
    image = blocks_image(64, 96, [RED, GREEN, BLUE])
    only_green, nothing = stage.process([image] * 2, [{"1.1", "1.2"}] * 2, allowed=[[1], []])
    assert only_green.present.tolist() == [1]  # all three colours without ``allowed`` (test_stage12)
    for ms in only_green.masks.values():
        assert set(ms.class_index.tolist()) == {1}
    assert nothing.present.tolist() == [] and all(len(ms) == 0 for ms in nothing.masks.values())


def test_pseudo_label_and_salience_with_captions_label_each_image_with_its_classes_only(image_folder, tmp_path):
    import pyarrow.parquet as pq
    from test_cli import LOOSE, TINY, runner

    from ovlabel.cli import app

    captions = tmp_path / "captions.jsonl"
    captions.write_text('{"image": "a.jpg", "caption": "Two dogs on the grass."}\n'
                        '{"image": "sub/b.png", "caption": "a cat under a blue sky"}\n'
                        '{"image": "tiny.png", "caption": ""}\n', encoding="utf-8")
    out = tmp_path / "run"
    args = ["pseudo-label", str(image_folder), "--out", str(out), *TINY, *LOOSE, "--vocab", "cat,dog,sky",
            "--captions", str(captions), "--captions-missing", "none"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    allowed = {"a.jpg": {1}, "sub/b.png": {0, 2}}  # no caption / empty caption / no known class: none
    masks = pq.read_table(out / "masks.parquet").to_pylist()
    rows = {r["image_id"]: r["file"] for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    for m in masks:
        assert m["class_index"] in allowed.get(rows[m["image_id"]], set()), (rows[m["image_id"]], m["class_index"])
    doc = json.loads((out / "run.json").read_text())
    assert doc["captions"]["images_by_reason"] == {"caption": 2, "empty caption": 1, "no caption": 2}
    assert doc["settings"]["captions"] == {"file": "captions.jsonl", "missing": "none"}

    # another caption for one image: only that image is labelled again
    captions.write_text(captions.read_text().replace("Two dogs", "A cat"), encoding="utf-8")
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "5 labelled (1 new, 4 already done)" in res.output

    sal = tmp_path / "sal"
    res = runner.invoke(app, ["salience", str(image_folder), "--out", str(sal), "--vocab", "cat,dog,sky",
                              "--captions", str(captions), "--captions-missing", "none", "--models", "tiny",
                              "--device", "cpu", "--no-progress", "--resolution", "64", "--threshold", "0", "--no-crf"])
    assert res.exit_code == 0, res.output
    doc = json.loads((sal / "run.json").read_text())
    assert doc["settings"]["classes_from"].startswith("captions (captions.jsonl")
    rows = {r["image_id"]: r["file"] for r in pq.read_table(sal / "manifest.parquet").to_pylist()}
    for m in pq.read_table(sal / "masks.parquet").to_pylist():
        assert m["class_index"] in {"a.jpg": {0}, "sub/b.png": {0, 2}}.get(rows[m["image_id"]], set())

"""Vocabularies and prompt templates (issue item 4)."""

from __future__ import annotations

import pytest

from ovlabel.errors import OvlabelError
from ovlabel.vocab import PRESET_VOCABULARIES, load_templates, load_vocabulary, prompt_name

SIZES = {
    "coco-stuff": 171, "coco-object": 80, "voc": 20, "voc-bg": 21,
    "pascal-context": 59, "pascal-context-60": 60, "ade20k": 150, "cityscapes": 19,
    "coco-stuff-stuff": 91, "voc-background-stuff": 26,
}


@pytest.mark.parametrize("name,size", SIZES.items())
def test_presets_have_the_dataset_class_counts(name, size):
    v = load_vocabulary(name)
    assert len(v) == size and v.source == f"preset:{name}"


def test_presets_are_consistent_with_each_other():
    assert set(SIZES) == set(PRESET_VOCABULARIES)
    stuff = load_vocabulary("coco-stuff").names
    assert load_vocabulary("coco-object").names == stuff[:80]
    assert load_vocabulary("coco-stuff-stuff").names == stuff[80:]  # FMbSeg's PV-21 background stand-ins
    assert stuff[0] == "person" and stuff[-1] == "wood"
    assert load_vocabulary("voc-bg").names == ["background"] + load_vocabulary("voc").names
    assert load_vocabulary("pascal-context-60").names == ["background"] + load_vocabulary("pascal-context").names
    assert load_vocabulary("cityscapes").names[:3] == ["road", "sidewalk", "building"]
    assert load_vocabulary("ade20k").names[:3] == ["wall", "building", "sky"]


def test_comma_list_and_single_class():
    v = load_vocabulary(" rocket , launch  tower,bridge ")
    assert v.names == ["rocket", "launch tower", "bridge"]
    assert load_vocabulary("rocket,").names == ["rocket"]


def test_file_with_synonyms_and_comments(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("# my classes\nperson, man, woman\n\ncar\n  traffic light  \n")
    v = load_vocabulary(str(f))
    assert v.names == ["person", "car", "traffic light"]
    assert v.classes[0].synonyms == ("person", "man", "woman")
    assert v.to_json()["synonyms"] == {"person": ["person", "man", "woman"]}


@pytest.mark.parametrize(
    "value,message",
    [
        ("", "empty vocabulary"),
        ("   ", "empty vocabulary"),
        ("cocostuff", "unknown vocabulary 'cocostuff'.*coco-stuff"),
        ("rocket,,bridge", "empty class name at position 2"),
        ("rocket,Rocket", "duplicate class name 'Rocket' at position 2"),
        ("my/classes.txt", "vocabulary file 'my/classes.txt' does not exist"),
    ],
)
def test_bad_vocabularies_name_the_value(value, message):
    with pytest.raises(OvlabelError, match=message):
        load_vocabulary(value)


def test_bad_vocabulary_files(tmp_path):
    f = tmp_path / "v.txt"
    f.write_text("cat\ndog, cat\n")
    with pytest.raises(OvlabelError, match="duplicate class name 'cat' on line 2.*already given on line 1"):
        load_vocabulary(str(f))
    f.write_text("cat\ndog,,puppy\n")
    with pytest.raises(OvlabelError, match="empty class name on line 2"):
        load_vocabulary(str(f))
    f.write_text("# only comments\n")
    with pytest.raises(OvlabelError, match="has no classes"):
        load_vocabulary(str(f))
    f.write_text("\n".join(f"class{i}" for i in range(256)))
    with pytest.raises(OvlabelError, match="256 classes; label maps hold at most 255"):
        load_vocabulary(str(f))


def test_template_sets():
    assert load_templates("fmbseg").templates == ("a photo of a {}.",)
    vild = load_templates("vild").templates
    assert len(vild) == 14 and vild[0] == "a photo of a {}." and vild[-1] == "There is a large {} in the scene."
    imagenet = load_templates("imagenet").templates
    assert len(imagenet) == 80 and imagenet[0] == "a bad photo of a {}."
    assert all(t.count("{}") == 1 for t in vild + imagenet)
    assert load_templates("vild").key != load_templates("fmbseg").key


def test_template_files_and_errors(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("a photo of a {}.\nan aerial view of {}\n")
    assert load_templates(str(f)).templates == ("a photo of a {}.", "an aerial view of {}")
    f.write_text("a photo of a thing\n")
    with pytest.raises(OvlabelError, match="exactly one '\\{\\}'"):
        load_templates(str(f))
    with pytest.raises(OvlabelError, match="unknown template set 'vlid'"):
        load_templates("vlid")


def test_prompt_name_cleans_dataset_names_only_for_prompting():
    assert prompt_name("wall-other") == "wall"
    assert prompt_name("traffic_light") == "traffic light"
    assert prompt_name("wall-brick") == "wall brick"
    assert prompt_name("other") == "other"

"""The defaults issue 12 made faithful are config fields that runs record, so a rerun says why it recomputes."""

from __future__ import annotations

import pytest

from ovlabel.config import ClassifyConfig, CRFConfig, DetectConfig, MergeConfig, TrainAlignConfig
from ovlabel.salience_config import SalienceConfig, TuneConfig


def test_changed_defaults_are_recorded_result_parameters():
    detect = DetectConfig().result_params()
    assert (detect["min_crops"], detect["min_valid"]) == (2, 0.5)
    assert ClassifyConfig(classifier="ovseg").result_params()["crop_shape"] == "stretch"
    assert "crop_shape" not in ClassifyConfig().result_params()  # the fmbseg classifier makes no crops
    assert MergeConfig().result_params() == {"stage12_ratio": 0.2, "seed": 0, "paint": "score"}
    train = TrainAlignConfig().result_params()
    assert "loss_norm" in train and "stage12_fraction" not in train  # one Stage 1.2 rule: the run's
    sal = SalienceConfig().to_json()
    assert (sal["rounds"], sal["unary"], sal["itm_token"], sal["crf"]["blur_side"]) == (4, "softmax", "enc", "long")
    tune = TuneConfig()
    assert (tune.rounds, tune.itm_token, tune.reward_norm, tune.templates) == (4, "enc", "image", "raw")


@pytest.mark.parametrize("make,bad", [
    (lambda: DetectConfig(min_valid=-0.1), "min_valid=-0.1"),
    (lambda: ClassifyConfig(crop_shape="crop"), "crop_shape='crop'"),
    (lambda: CRFConfig(blur_side="diagonal"), "blur_side='diagonal'"),
    (lambda: SalienceConfig(unary="hard"), "unary='hard'"),
    (lambda: SalienceConfig(itm_token="sep"), "itm_token='sep'"),
    (lambda: TuneConfig(reward_norm="dataset"), "reward_norm='dataset'"),
    (lambda: TrainAlignConfig(loss_norm="sum"), "loss_norm='sum'"),
])
def test_new_options_reject_bad_values_by_name(make, bad):
    from ovlabel.errors import OvlabelError

    with pytest.raises(OvlabelError, match=bad):
        make()

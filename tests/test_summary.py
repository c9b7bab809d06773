"""cnnkit.summary: per-layer shapes, parameters, MACs and receptive fields, against the
papers' arithmetic; and the `cnnkit summary` command."""

import pytest
import torch
from torch import nn

from cnnkit.cli import main as cli_main
from cnnkit.models import get_model, list_models, model_info
from cnnkit.nn import BasicBlock, Bottleneck
from cnnkit.summary import summary


def summarize(name, **kwargs):
    with torch.device("meta"):
        model = get_model(name, **kwargs)
    return summary(model, model_info(name).input_size)


# torchvision's published GFLOPS (multiply-accumulates, "v1.5": stride on the 3x3; the
# issue quotes them to one decimal: 1.8/3.6/4.1/7.8/11.5) and the ResNet paper's Table 1
# (stride on the first 1x1), which quotes 3.86, 7.57 and 11.28 as 3.8, 7.6 and 11.3.
@pytest.mark.parametrize(
    "name, v15, paper",
    [("resnet18", 1.81, 1.8), ("resnet34", 3.66, 3.6), ("resnet50", 4.09, 3.8),
     ("resnet101", 7.80, 7.6), ("resnet152", 11.51, 11.3)],
)
def test_resnet_gmacs_at_224(name, v15, paper):
    assert summarize(name).total_macs / 1e9 == pytest.approx(v15, abs=0.005)
    if name in ("resnet18", "resnet34"):  # no bottleneck: no 1x1 to move the stride to
        with pytest.raises(ValueError, match="Bottleneck blocks only"):
            summarize(name, stride_in_1x1=True)
        return
    with_paper_stride = summarize(name, stride_in_1x1=True).total_macs / 1e9
    assert with_paper_stride == pytest.approx(paper, abs=0.07)


@pytest.mark.parametrize(
    "name, gmacs",
    [("alexnet", 0.71), ("vgg11", 7.61), ("vgg13", 11.31), ("vgg16", 15.47), ("vgg19", 19.63)],
)
def test_torchvision_published_gmacs(name, gmacs):
    assert summarize(name).total_macs / 1e9 == pytest.approx(gmacs, abs=0.01)


def test_lenet5_layer_by_layer():
    result = summarize("lenet5")
    convs = [row for row in result.rows if row.kind in ("Conv2d", "Linear")]
    assert [row.output_shape for row in convs] == [(1, 6, 28, 28), (1, 16, 10, 10), (1, 120, 1, 1), (1, 84), (1, 10)]
    assert [row.params for row in convs] == [156, 2_416, 48_120, 10_164, 850]
    assert [row.macs for row in convs] == [117_600, 240_000, 48_000, 10_080, 840]
    # C1 sees 5x5; S2 doubles the step; C3 sees 5 + 4*2 = 14; S4; C5 sees 14 + 1*2 + 4*4 = 32.
    fields = {row.name: row.receptive_field for row in result.rows}
    assert fields["features.0"] == 5 and fields["features.3"] == 14 and fields["features.6"] == 32
    assert result.total_params == 61_706


@pytest.mark.parametrize("name", list_models())
def test_metadata_macs_are_the_summary_figures(name):
    result = summarize(name)
    info = model_info(name)
    assert result.total_macs == info.macs
    assert result.total_params == info.params
    assert result.rows[-1].output_shape == (1, info.num_classes)


def test_block_conv_weights_are_the_papers():
    basic = summary(BasicBlock(64, 64), (64, 56, 56))
    assert basic.conv_weights() == 64 * 64 * 3 * 3 * 2 == 73_728
    bottleneck = summary(Bottleneck(256, 64), (256, 56, 56))
    assert bottleneck.conv_weights() == 16_384 + 36_864 + 16_384 == 69_632


def test_receptive_field_of_resnet50():
    """The widely quoted 427 pixels at the last conv (v1.5 stride placement)."""
    result = summarize("resnet50")
    convs = [row for row in result.rows if row.kind == "Conv2d" and "downsample" not in row.name]
    assert convs[-1].receptive_field == 427
    assert result.rows[-1].receptive_field is None  # the classifier sees the whole image


def test_summary_leaves_the_model_as_it_was():
    model = get_model("resnet20").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary(model, (3, 32, 32))
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_summary_table_and_batch():
    result = summary(nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU()), (4, 3, 9, 9))
    assert result.total_macs == 4 * 8 * 4 * 4 * 27
    text = str(result)
    assert "Conv2d" in text and "4x8x4x4" in text and "total MACs" in text
    with pytest.raises(ValueError, match="input_size"):
        summary(nn.Conv2d(3, 8, 3), (3, 9))


def test_cli_summary(capsys):
    assert cli_main(["summary", "resnet50"]) == 0
    out = capsys.readouterr().out
    assert "layer4.2.conv3" in out and "25,557,032" in out and "4.09G" in out
    assert cli_main(["summary", "resnet50", "--stride-in-1x1"]) == 0
    assert "3.86G" in capsys.readouterr().out
    assert cli_main(["summary", "resnet20", "--input-size", "64"]) == 0
    assert "1x3x64x64" in capsys.readouterr().out
    assert cli_main(["summary", "resnet9"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_receptive_fields_do_not_depend_on_fusion():
    """Unfused blocks make their output with torch.relu, outside any module: the shortcut
    and the next conv, both reading it, must see the field the fused bn2 reports."""
    fused, unfused = summarize("resnet18"), summarize("resnet18", fused=False)
    fields = [{row.name: row.receptive_field for row in result.rows} for result in (fused, unfused)]
    assert fields[1].pop("relu") == fields[0]["bn1"]  # the fused bn1 applies the stem's ReLU
    assert fields[1] == fields[0]
    convs = [row for row in unfused.rows if row.kind == "Conv2d" and "downsample" not in row.name]
    assert convs[-1].receptive_field == 435


@pytest.mark.parametrize(
    "args",
    [["--num-classes", "-1"], ["--input-size", "0", "224", "224"],
     ["--input-size", "3", "-5", "-5"], ["--input-size", "x"]],
)
def test_cli_summary_rejects_non_positive_sizes(args, capsys):
    with pytest.raises(SystemExit) as excinfo:
        cli_main(["summary", "lenet5", *args])
    assert excinfo.value.code != 0
    assert "expected a positive integer" in capsys.readouterr().err


def test_cli_summary_list(capsys):
    assert cli_main(["summary", "--list"]) == 0
    assert capsys.readouterr().out.split() == list_models()
    with pytest.raises(SystemExit):
        cli_main(["summary"])  # neither a name nor --list
    assert "--list" in capsys.readouterr().err

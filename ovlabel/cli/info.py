"""Information commands: ``models`` and ``vocab``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ovlabel.cli._app import _guard, app


@app.command("models")
def list_models():
    """List known models and whether their weights are already in the local caches."""
    from ovlabel.models.registry import KNOWN_MODELS, parse_model, weights_file

    typer.echo(f"{'model':34} {'cached':8} description")
    for name, desc in KNOWN_MODELS:
        spec = parse_model(name, name.split(":")[0])
        if spec.random_init:
            state = "builtin"
        else:
            state = "yes" if weights_file(spec, download=False) else "no"
        typer.echo(f"{name:34} {state:8} {desc}")
    typer.echo(
        "\nWeights download on first use into $HF_HOME (CLIP, BLIP) and $TORCH_HOME/hub/checkpoints (SAM, DINOv2;\n"
        "DINOv2's model code via torch.hub into $TORCH_HOME/hub).\n"
        "Offline: copy those caches over, or pass files: --clip clip:ViT-L-14-quickgelu/PATH --sam sam:vit_h/PATH\n"
        "--dinov2 dinov2:dinov2_vitl14/PATH with OVLABEL_DINOV2_HUB=/path/to/a/dinov2/clone\n"
        "--blip blip:itm-large-flickr/FOLDER (a save_pretrained folder)"
    )


@app.command("vocab")
def vocab_cmd(
    name: Annotated[Optional[str], typer.Argument(help="A preset, file or comma list to print; omit to list presets.")] = None,
):
    """List vocabulary presets and template sets, or print the classes of one vocabulary."""
    from ovlabel.vocab import PRESET_VOCABULARIES, TEMPLATE_SETS, load_vocabulary

    if name is None:
        typer.echo("vocabularies:")
        for k, v in PRESET_VOCABULARIES.items():
            typer.echo(f"  {k:20} {v}")
        typer.echo("template sets:")
        for k, v in TEMPLATE_SETS.items():
            typer.echo(f"  {k:20} {v}")
        return
    voc = _guard(lambda: load_vocabulary(name))
    for i, c in enumerate(voc.classes):
        typer.echo(f"{i:4d} {', '.join(c.synonyms)}")

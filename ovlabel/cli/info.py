"""Information commands: ``models`` and ``vocab``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ovlabel.cli._app import _guard, app
from ovlabel.errors import OvlabelError


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
    from_captions: Annotated[Optional[Path], typer.Option("--from-captions", help="Build a vocabulary of the most frequent visual entities of a captions file (JSON lines or CSV: image, caption).")] = None,
    top: Annotated[int, typer.Option(help="With --from-captions: how many entities to keep (OVSegmentor: 100).")] = 100,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="With --from-captions: write the vocabulary file here (usable as --vocab).")] = None,
):
    """List vocabulary presets and template sets, print the classes of one vocabulary, or build one from
    captions (--from-captions)."""
    from ovlabel.vocab import PRESET_VOCABULARIES, TEMPLATE_SETS, load_vocabulary

    if from_captions is not None:
        _guard(lambda: _captions_vocab(name, from_captions, top, out))
        return
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


def _captions_vocab(name: str | None, path: Path, top: int, out: Path | None) -> None:
    """Print (and with ``out`` write) the ``top`` most frequent caption entities (:mod:`ovlabel.captions`)."""
    from ovlabel.captions import entity_counts, top_entities
    from ovlabel.io.atomic import atomic_path

    if name is not None:
        raise OvlabelError("give a vocabulary NAME or --from-captions, not both")
    if not 1 <= top <= 100_000:
        raise OvlabelError(f"--top {top} is invalid: expected a number of entities in [1, 100000]")
    counts, n, parser = entity_counts(path)
    entities = top_entities(counts, top)
    typer.echo(f"# {len(entities)} most frequent visual entities in {n} captions of {path.name} "
               f"(parser: {parser or 'offline lemmas + known terms'})")
    for i, (entity, count) in enumerate(entities):
        typer.echo(f"{i:4d} {count:7d}  {entity}")
    if out is not None:
        lines = [f"# {len(entities)} most frequent visual entities of {path.name} (ovlabel vocab --from-captions --top {top})"]
        lines += [e for e, _ in entities]
        with atomic_path(out) as tmp:
            Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
        typer.echo(f"vocabulary -> {out}")

"""Images in: discovery, decoding of every mode, and clear failures for bad files (issue item 3)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest import blocks_image, save
from ovlabel.errors import ImageDecodeError, OvlabelError
from ovlabel.io.images import decode_image, discover_images, read_file


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


RGB = blocks_image(20, 30, [(250, 10, 10), (10, 250, 10), (10, 10, 250)])


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_formats_decode_exactly(fmt):
    kw = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_image(encode(Image.fromarray(RGB), fmt, **kw))
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    assert np.array_equal(out, RGB)
    assert out.flags.writeable


def test_jpeg_decodes_close():
    out = decode_image(encode(Image.fromarray(RGB), "JPEG", quality=95))
    assert out.shape == (20, 30, 3) and np.median(np.abs(out.astype(int) - RGB)) <= 3  # chroma blurs at edges


def test_exif_orientation_is_applied():
    img = Image.fromarray(RGB)  # 30 wide, 20 high; left band red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = decode_image(encode(img, "JPEG", quality=95, exif=exif.tobytes()))
    assert out.shape == (30, 20, 3)
    assert out[0, -1, 0] > 200 and out[0, -1, 2] < 60  # red band now on top after rotating clockwise


def test_grayscale_and_one_bit_become_gray_rgb():
    gray = np.arange(0, 240, 4, dtype=np.uint8).reshape(6, 10)
    out = decode_image(encode(Image.fromarray(gray), "PNG"))
    assert out.shape == (6, 10, 3) and np.array_equal(out[..., 0], gray) and np.array_equal(out[..., 2], gray)
    bw = Image.fromarray(gray > 100)
    out = decode_image(encode(bw, "PNG"))
    assert set(np.unique(out)) <= {0, 255} and np.array_equal(out[..., 1] == 255, gray > 100)


def test_rgba_is_composited_over_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:2, :, 3] = 255  # top half opaque, bottom half fully transparent
    rgba[2:, :, :3] = 0  # hidden colour is black: must not leak through
    out = decode_image(encode(Image.fromarray(rgba), "PNG"))
    assert (out[:2] == [255, 0, 0]).all()
    assert (out[2:] == [255, 255, 255]).all()


def test_palette_with_and_without_transparency():
    pal = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    out = decode_image(encode(pal, "PNG"))
    assert np.abs(out.astype(int) - RGB).max() <= 8
    pal.info["transparency"] = int(np.asarray(pal)[0, 0])  # left band transparent
    out = decode_image(encode(pal, "PNG", transparency=pal.info["transparency"]))
    assert (out[:, 0] == 255).all()


def test_cmyk_jpeg_converts_to_rgb():
    cmyk = Image.fromarray(RGB).convert("CMYK")
    out = decode_image(encode(cmyk, "JPEG", quality=95))
    assert out.shape == (20, 30, 3)
    assert out[10, 2, 0] > 180 and out[10, 2, 1] < 90  # still red


def test_16_bit_grayscale_is_scaled_not_clipped():
    arr = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I")
    out = decode_image(encode(img, "PNG"))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    out = decode_image(encode(img, "TIFF"))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"this is not an image, just text\n", "not a recognised image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a recognised image|corrupt"),
    ],
)
def test_undecodable_bytes_raise_with_a_reason(data, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(data)


def test_truncated_files_fail():
    for fmt in ("JPEG", "PNG"):
        data = encode(Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)), fmt)
        with pytest.raises(ImageDecodeError, match="truncated|corrupt"):
            decode_image(data[: len(data) // 2])


def test_read_file_reports_empty_and_missing(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty file"):
        read_file(tmp_path / "empty.jpg")
    with pytest.raises(ImageDecodeError, match="file not found"):
        read_file(tmp_path / "gone.jpg")
    (tmp_path / "x.png").write_bytes(b"abc")
    data, sha = read_file(tmp_path / "x.png")
    assert data == b"abc" and sha == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# ---- discovery --------------------------------------------------------------------------------------

def test_folder_is_searched_recursively_skipping_hidden_and_non_images(tmp_path):
    root = tmp_path / "imgs"
    for rel in ["b.JPG", "a/c.png", "a/b/d.webp", "e.tiff", "f.bmp", "g.jpeg", "h.tif"]:
        save(root / rel, RGB)
    (root / "notes.txt").write_text("hi")
    save(root / ".hidden.png", RGB)
    save(root / ".cache" / "x.png", RGB)
    src = discover_images(root)
    assert src.kind == "folder" and src.root == root.resolve()
    assert [e.rel for e in src.entries] == ["a/b/d.webp", "a/c.png", "b.JPG", "e.tiff", "f.bmp", "g.jpeg", "h.tif"]


def test_symlink_cycles_are_walked_once(tmp_path):
    save(tmp_path / "imgs" / "sub" / "a.png", RGB)
    (tmp_path / "imgs" / "sub" / "loop").symlink_to(tmp_path / "imgs", target_is_directory=True)
    src = discover_images(tmp_path / "imgs")
    assert [e.rel for e in src.entries] == ["sub/a.png"]


def test_output_folder_inside_input_is_not_discovered(tmp_path):
    save(tmp_path / "a.png", RGB)
    save(tmp_path / "run" / "labels" / "a.png", RGB[..., 0])
    src = discover_images(tmp_path, exclude=tmp_path / "run")
    assert [e.rel for e in src.entries] == ["a.png"]


def test_list_file_with_relative_paths_comments_and_duplicates(tmp_path):
    save(tmp_path / "data" / "x" / "1.png", RGB)
    save(tmp_path / "data" / "y" / "2.jpg", RGB)
    lst = tmp_path / "data" / "list.txt"
    lst.write_text(f"# my images\nx/1.png\n\n{tmp_path / 'data' / 'y' / '2.jpg'}\nx/1.png\nx/missing.png\n")
    src = discover_images(lst)
    assert src.kind == "list"
    assert src.root == (tmp_path / "data").resolve()
    assert [e.rel for e in src.entries] == ["x/1.png", "x/missing.png", "y/2.jpg"]


def test_single_image_file_is_an_input(tmp_path):
    p = save(tmp_path / "one.png", RGB)
    src = discover_images(p)
    assert src.kind == "file" and [e.rel for e in src.entries] == ["one.png"]


def test_missing_path_and_empty_folder_are_clear_errors(tmp_path):
    with pytest.raises(OvlabelError, match="'.*nowhere' does not exist"):
        discover_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(OvlabelError, match="no images found in folder"):
        discover_images(tmp_path / "empty")
    (tmp_path / "list.txt").write_text("# nothing\n\n")
    with pytest.raises(OvlabelError, match="names no image paths"):
        discover_images(tmp_path / "list.txt")
    (tmp_path / "blob.bin").write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(OvlabelError, match="neither a folder"):
        discover_images(tmp_path / "blob.bin")

"""Photo-set preparation rules, on made-up file lists (no packages are downloaded)."""

from pathlib import Path

from hvae.data.wallpapers import PHOTOGRAPHS, Picture, assign_split, source_group


def test_resolution_and_variant_copies_share_one_source_group():
    kde = "plasma-workspace-wallpapers"
    assert (
        source_group(kde, Path("usr/share/wallpapers/Kite/contents/images/2560x1600.jpg"))
        == f"{kde}/Kite"
    )
    assert (
        source_group(kde, Path("usr/share/wallpapers/Kay/contents/images_dark/1080x1920.png"))
        == f"{kde}/Kay"
    )
    assert source_group(kde, Path("usr/share/wallpapers/Kite/contents/screenshot.jpg")) is None
    mate = "mate-backgrounds"
    names = ["Elephants.jpg", "Elephants_3840x2160.jpg", "Elephants_5640x3172.jpg"]
    assert {source_group(mate, Path(n)) for n in names} == {f"{mate}/Elephants"}
    sway = "sway-backgrounds"
    names = ["Sway_Wallpaper_Blue_1136x640_Portrait.png", "Sway_Wallpaper_Blue_1920x1080.png"]
    assert {source_group(sway, Path(n)) for n in names} == {f"{sway}/Sway_Wallpaper_Blue"}
    assert source_group("gnome-backgrounds", Path("adwaita-l.webp")) == source_group(
        "gnome-backgrounds", Path("adwaita-d.webp")
    )


def test_split_holds_out_whole_groups_per_kind_and_is_stable():
    photos = sorted(PHOTOGRAPHS)[:10]
    graphics = [f"pkg/graphic{i}" for i in range(10)]
    pictures = [Picture(g, "pkg", "x.png", 10, 10, "0") for g in photos + graphics]
    assign_split(pictures, {"photo": 3, "graphic": 2})
    held = [p for p in pictures if p.split == "heldout"]
    assert sum(p.kind == "photo" for p in held) == 3 and sum(p.kind == "graphic" for p in held) == 2
    again = [Picture(g, "pkg", "x.png", 10, 10, "0") for g in reversed(photos + graphics)]
    assign_split(again, {"photo": 3, "graphic": 2})
    assert {p.group for p in again if p.split == "heldout"} == {p.group for p in held}

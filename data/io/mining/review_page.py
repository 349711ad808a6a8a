"""The reviewer's page of a mining round: review/index.html and its drawn tiles.

    write_review_page(folder, result, images, reference_crops, overwrite=True)

tools/mine_labels.py writes it beside candidates.json. Per new class: its reference
crops (what the verifier compared against), then the accepted, doubtful and rejected
candidates, each group in the ranked list's order (the verifier's confidence, best
first; for the rejected, the first tiles are the nearest misses, where a wrong
rejection would be), at most TILES_PER_GROUP each. A tile is the candidate's box with
as much context again around it, the box drawn in its decision's colour; its caption
gives the rank in candidates.json, the image, the detector's score, the verifier's
vote and confidence, and the nearest neighbours' labels. c<k>_overview.png puts the
first OVERVIEW_COLUMNS tiles of each row (references, accepted, doubtful, rejected) in
one picture. The images are read a second time, only those with a drawn tile, one at a
time.

The page is what a user looks at before trusting a round's labels (accepted boxes
that are parts of objects, rejected ones that are the class) and is the drawn page of
docs/fewshot.md.
"""
import collections
import html
import os

import numpy as np

from data.io import annotation, cleaning
from libs.base.io_utils import atomic_directory
from libs.mining import verify

TILES_PER_GROUP = 24
TILE_SIDE = 160
CONTEXT = 1.0                # the tile shows the box grown by this much of its size per side
REFERENCES_SHOWN = 12
OVERVIEW_COLUMNS = 8         # overview.png: this many tiles of each row, at this side
OVERVIEW_SIDE = 96
DECISIONS = (verify.ACCEPTED, verify.DOUBTFUL, verify.REJECTED)
# BGR, as cv2 draws: green, amber, red.
COLOURS = {verify.ACCEPTED: (60, 180, 75), verify.DOUBTFUL: (0, 170, 240),
           verify.REJECTED: (40, 40, 230)}
_TITLES = {verify.ACCEPTED: "accepted: written as labels",
           verify.DOUBTFUL: "doubtful: written as ignore regions",
           verify.REJECTED: "rejected: not written"}


def chosen_tiles(candidates, new_classes, per_group=TILES_PER_GROUP):
    """{class: {decision: [(rank, candidate)]}}: the first `per_group` candidates of each
    class and decision in the ranked order (rank: 1-based, as in candidates.json)."""
    groups = {name: {decision: [] for decision in DECISIONS} for name in new_classes}
    for rank, candidate in enumerate(candidates, 1):
        group = groups.get(candidate.class_name, {}).get(candidate.verdict.decision)
        if group is not None and len(group) < per_group:
            group.append((rank, candidate))
    return groups


def tile_window(box, height, width, context=CONTEXT):
    """The integer window (top, left, bottom, right) a tile shows: the box grown by
    `context` of its size on each side, clipped to the image, never empty."""
    y1, x1, y2, x2 = box
    dy, dx = (y2 - y1) * context, (x2 - x1) * context
    top = int(np.clip(np.floor(y1 - dy), 0, height - 1))
    left = int(np.clip(np.floor(x1 - dx), 0, width - 1))
    bottom = int(np.clip(np.ceil(y2 + dy), top + 1, height))
    right = int(np.clip(np.ceil(x2 + dx), left + 1, width))
    return top, left, bottom, right


def _fit(bgr, side):
    """`bgr` scaled to fit a side x side square (aspect kept), centred on grey."""
    import cv2
    h, w = bgr.shape[:2]
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(bgr, size, interpolation=interpolation)
    canvas = np.full((side, side, 3), 200, np.uint8)
    top, left = (side - small.shape[0]) // 2, (side - small.shape[1]) // 2
    canvas[top:top + small.shape[0], left:left + small.shape[1]] = small
    return canvas, scale, top, left


def draw_tile(rgb, candidate, side=TILE_SIDE):
    """One candidate drawn: its window of the image with the box in its colour (BGR)."""
    import cv2
    top, left, bottom, right = tile_window(candidate.box, rgb.shape[0], rgb.shape[1])
    window = np.ascontiguousarray(rgb[top:bottom, left:right, ::-1])
    canvas, scale, pad_top, pad_left = _fit(window, side)
    y1, x1, y2, x2 = candidate.box
    corner = (int(round((x1 - left) * scale)) + pad_left,
              int(round((y1 - top) * scale)) + pad_top)
    opposite = (int(round((x2 - left) * scale)) + pad_left,
                int(round((y2 - top) * scale)) + pad_top)
    cv2.rectangle(canvas, corner, opposite, COLOURS[candidate.verdict.decision], 2)
    return canvas


def overview_image(rows, columns=None, side=None):
    """One picture of a class: a row per [(title, [BGR tiles])], the first `columns`
    tiles of each scaled to `side`, the title written in the row's left margin."""
    import cv2
    columns = columns or OVERVIEW_COLUMNS
    side = side or OVERVIEW_SIDE
    margin, gap = 110, 4
    canvas = np.full((len(rows) * (side + gap) + gap, margin + columns * (side + gap), 3),
                     255, np.uint8)
    for r, (title, tiles) in enumerate(rows):
        top = gap + r * (side + gap)
        colour = COLOURS.get(title, (60, 60, 60))
        cv2.putText(canvas, title, (6, top + side // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    colour, 1, cv2.LINE_AA)
        for c, tile in enumerate(tiles[:columns]):
            left = margin + c * (side + gap)
            canvas[top:top + side, left:left + side] = cv2.resize(
                tile, (side, side), interpolation=cv2.INTER_AREA)
    return canvas


def _caption(rank, candidate):
    verdict = candidate.verdict
    neighbours = collections.Counter(
        "background" if n == verify.BACKGROUND else n for n in verdict.neighbours)
    near = ", ".join(f"{count} {name}" for name, count in neighbours.most_common())
    return (f"#{rank} {candidate.filename}: score {candidate.score:.2f}, vote "
            f"{verdict.vote:.2f}, confidence {verdict.confidence:.2f}; nearest: {near}")


def _figure(src, caption):
    return (f"<figure><img src='{src}' alt='{html.escape(caption)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


_STYLE = """body{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}
.gallery{display:flex;flex-wrap:wrap;gap:10px}.gallery figure{margin:0;width:170px}
figcaption{font-size:0.75em;word-break:break-all}h3 span{padding:1px 8px;color:white}"""


def write_review_page(folder, result, images, reference_crops, overwrite=True):
    """Writes `folder` (index.html and the tiles) atomically; returns index.html's path.

    result: the MiningResult; images: the annotated images it was mined from (their
    order is the candidates' image_index); reference_crops: {new class: [RGB crops]}.
    """
    import cv2
    new_classes = list(result.counts)
    groups = chosen_tiles(result.candidates, new_classes)
    by_image = collections.defaultdict(list)
    for class_index, name in enumerate(new_classes):
        for decision in DECISIONS:
            for position, (rank, candidate) in enumerate(groups[name][decision]):
                by_image[candidate.image_index].append(
                    (f"c{class_index}_{decision}_{position:02d}.png", candidate))
    drawn = {}
    with atomic_directory(folder, overwrite=overwrite) as temp:
        report = annotation.Report()
        for index in sorted(by_image):
            loaded = cleaning.load_and_clean(images[index], None, report)
            if loaded is None:      # gone since it was mined: its tiles are left out
                continue
            rgb = loaded[0].rgb
            for name, candidate in by_image[index]:
                drawn[name] = draw_tile(rgb, candidate)
                cv2.imwrite(os.path.join(temp, name), drawn[name])
        sections = []
        for class_index, name in enumerate(new_classes):
            references, reference_tiles = [], []
            for k, crop in enumerate(reference_crops.get(name, [])[:REFERENCES_SHOWN]):
                file = f"c{class_index}_reference_{k:02d}.png"
                canvas, _, _, _ = _fit(np.ascontiguousarray(crop[..., ::-1]), TILE_SIDE)
                cv2.imwrite(os.path.join(temp, file), canvas)
                references.append(_figure(file, f"reference {k + 1}"))
                reference_tiles.append(canvas)
            rows = [("references", reference_tiles)] + [
                (decision, [drawn[f"c{class_index}_{decision}_{position:02d}.png"]
                            for position in range(len(groups[name][decision]))
                            if f"c{class_index}_{decision}_{position:02d}.png" in drawn])
                for decision in DECISIONS]
            overview = f"c{class_index}_overview.png"
            cv2.imwrite(os.path.join(temp, overview), overview_image(rows))
            counts = result.counts[name]
            parts = [f"<h2>{html.escape(name)}</h2><p>{counts['candidates']} candidates: "
                     + ", ".join(f"{counts[d]} {d}" for d in DECISIONS)
                     + f" (at a glance: <a href='{overview}'>{overview}</a>, the first "
                     f"{OVERVIEW_COLUMNS} of each row)</p>",
                     f"<h3>references ({len(reference_crops.get(name, []))})</h3>"
                     f"<div class='gallery'>{''.join(references)}</div>"]
            for decision in DECISIONS:
                colour = "rgb" + str(tuple(reversed(COLOURS[decision])))
                figures = "".join(
                    _figure(f"c{class_index}_{decision}_{position:02d}.png",
                            _caption(rank, candidate))
                    for position, (rank, candidate) in enumerate(groups[name][decision])
                    if f"c{class_index}_{decision}_{position:02d}.png" in drawn)
                shown = len(groups[name][decision])
                more = counts[decision] - shown
                parts.append(f"<h3><span style='background:{colour}'>{_TITLES[decision]}"
                             f"</span> {counts[decision]}"
                             + (f" (the first {shown} shown)" if more > 0 else "") + "</h3>"
                             f"<div class='gallery'>{figures or '<p>none</p>'}</div>")
            sections.append("".join(parts))
        page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Mined candidates</title>
<style>{_STYLE}</style></head><body>
<h1>Mined candidates: {html.escape(", ".join(new_classes))}</h1>
<p>Each tile: the candidate's box (its decision's colour) with as much context again
around it. Captions: the rank in candidates.json, the image, the detector's score, the
verifier's vote (the share of the nearest crops that are the class) and confidence, and
the nearest crops' labels. Rejected candidates are shown nearest miss first.</p>
{"".join(sections)}
</body></html>
"""
        with open(os.path.join(temp, "index.html"), "w", encoding="utf-8") as handle:
            handle.write(page)
    return os.path.join(folder, "index.html")

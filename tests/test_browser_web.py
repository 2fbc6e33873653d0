"""Tier 4: the pack's web extension in the real frontend: the loss curve after a real tiny training run, the DCG
schedule warning following the sampler's steps, the region preview with identity numbers, the socket colours.

Screenshots of each go to test-output/browser/web_*.png, cropped to the nodes they show. With
BOLID_UPDATE_SCREENSHOTS=1 the README's copies in docs/screenshots/ are rewritten from them (small, 256 colours)."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import numpy as np
import pytest
from browser_app import open_app, update_readme_copy
from PIL import Image
from region_assets import IMAGE_SIZE, REGIONS_IMAGE
from test_server_training import training_prompt

from bolid_core.guidance import DCGSchedule, DCGVariant, parse_step_values
from bolid_dev.web_widgets import PREVIEW_HEIGHTS
from bolid_dev.workflows import WORKFLOWS_DIR

README_SCREENSHOT_SIDE = 720

# Fit the given nodes into the viewport (nodes off screen are not drawn, so their widgets would not run).
FOCUS = """(ids) => {
    const canvas = window.app.canvas;
    const nodes = ids.map((id) => window.app.graph.getNodeById(id));
    const title = window.LiteGraph.NODE_TITLE_HEIGHT;
    const [margin, marginTop] = [60, 100]; // the frontend's side bar and workflow tabs lie over the canvas
    const left = Math.min(...nodes.map((n) => n.pos[0])) - 30;
    const top = Math.min(...nodes.map((n) => n.pos[1])) - title - 30;
    const right = Math.max(...nodes.map((n) => n.pos[0] + n.size[0])) + 30;
    const bottom = Math.max(...nodes.map((n) => n.pos[1] + n.size[1])) + 30;
    const box = canvas.canvas.getBoundingClientRect();
    const scale = Math.min(1.5, (box.width - margin) / (right - left), (box.height - marginTop) / (bottom - top));
    canvas.ds.scale = scale;
    canvas.ds.offset = [-left + margin / scale, -top + marginTop / scale];
    canvas.setDirty(true, true);
    const width = Math.min(box.width - margin, (right - left) * scale);
    const height = Math.min(box.height - marginTop, (bottom - top) * scale);
    return { x: box.left + margin, y: box.top + marginTop, width, height };
}"""
# Wait for a fresh draw of a node's preview: the widget records what it drew in `property` each time it draws.
REDRAW = """([id, property]) => {
    const node = window.app.graph.getNodeById(id);
    node[property] = undefined;
    window.app.canvas.setDirty(true, true);
}"""
# The room a laid-out workflow gives a node with a preview (bolid_dev/web_widgets.py), whatever the file says.
ROOM = """([id, extra]) => {
    const node = window.app.graph.getNodeById(id);
    node.setSize([Math.max(node.size[0], 340), Math.max(node.size[1], node.computeSize()[1] + extra)]);
}"""
SET_WIDGET = """([id, name, value]) => {
    const node = window.app.graph.getNodeById(id);
    node.widgets.find((w) => w.name === name).value = value;
}"""


def extension_url(page, name: str) -> str:
    return next(url for url in page.evaluate("() => fetch('/extensions').then((r) => r.json())") if name in url)


def load_workflow(page, name: str) -> dict:
    workflow = json.loads((WORKFLOWS_DIR / f"{name}.json").read_text())
    page.evaluate("async (workflow) => { await window.app.loadGraphData(workflow); }", workflow)
    for node in workflow["nodes"]:
        if node["type"] in PREVIEW_HEIGHTS:
            page.evaluate(ROOM, [node["id"], PREVIEW_HEIGHTS[node["type"]]])
    return workflow


def node_id(workflow: dict, node_type: str, nth: int = 0) -> int:
    return [node["id"] for node in workflow["nodes"] if node["type"] == node_type][nth]


def drawn(page, node: int, property: str, ready: str = "true") -> dict:
    """What the node's preview drew on its next draw (`ready`: a JS condition on `shown`)."""
    page.evaluate(REDRAW, [node, property])
    page.wait_for_function(
        f"""() => {{
            const shown = window.app.graph.getNodeById({node})["{property}"];
            return shown !== undefined && ({ready});
        }}""",
        timeout=20_000,
    )
    return page.evaluate(f"() => window.app.graph.getNodeById({node})['{property}']")


def screenshot(page, nodes: list[int], test_output: Path, name: str, readme: bool = True) -> Path:
    clip = page.evaluate(FOCUS, nodes)
    page.wait_for_timeout(400)
    path = test_output / "browser" / f"web_{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), clip=clip)
    if readme:
        update_readme_copy(path, README_SCREENSHOT_SIDE)
    return path


def no_added_errors(errors: list[str], baseline: set[str]) -> None:
    added = sorted(set(errors) - baseline)
    assert not added, "console errors the pack adds:\n" + "\n".join(added)


# --- the loss curve -----------------------------------------------------------------------------------------------


def test_loss_curve_shows_the_points_of_a_tiny_training_run(
    browser, comfy_server, client, baseline_errors, test_output: Path
) -> None:
    page, errors = open_app(browser, comfy_server)
    workflow = load_workflow(page, "train_bolid_adapter")
    trainer = node_id(workflow, "BoLIDTrainAdapter")
    prompt = training_prompt(f"web_chart_{uuid.uuid4().hex[:8]}", steps=3)
    assert prompt[str(trainer)]["class_type"] == "BoLIDTrainAdapter", "the UI and API files number nodes alike"
    page.evaluate(FOCUS, [trainer])
    client.run(prompt, timeout_s=600)
    page.wait_for_function(
        f"() => (window.app.graph.getNodeById({trainer}).bolidLoss ?? []).length === 3", timeout=20_000
    )
    points = page.evaluate(f"() => window.app.graph.getNodeById({trainer}).bolidLoss")
    assert [p["step"] for p in points] == [1, 2, 3] and all(p["max"] == 3 for p in points)
    assert all(math.isfinite(p["loss"]) and p["loss"] > 0 for p in points)
    assert drawn(page, trainer, "bolidLossShown") == 3, "the chart did not draw the points"
    screenshot(page, [trainer], test_output, "training_loss")
    page.close()
    no_added_errors(errors, baseline_errors)


# --- the DCG schedule ---------------------------------------------------------------------------------------------

SCHEDULE_CASES = [
    ("1, 1.5, 1.5, 1", "1, 3, 3, 1", 4),
    ("1, 1.5, 1.5, 1", "1, 3, 3, 1", 6),
    ("1.5", "1, 3, 3, 1", 6),
    ("1.5", "2", 9),
    ("1; 2; 3", " 1 , 2 ,3 ,", 3),
    ("1, 2, 3", "1, 2", 3),
    ("1e-1, .5, 5.", "1, 1, 1", 3),
    ("1, x", "1", 2),
    ("", "1", 2),
    ("1, nan", "1", 2),
    ("inf", "1", 2),
]


def server_verdict(alpha: str, beta: str, steps: int) -> tuple[list | None, list | None, list[str]]:
    """What the node's validation and the guider's schedule do with these inputs: the values and the errors."""
    values, errors = [], []
    for text in (alpha, beta):
        try:
            parsed = parse_step_values(text)
            values.append([parsed] if isinstance(parsed, float) else parsed)
        except ValueError as error:
            values.append(None)
            errors.append(str(error))
    if not errors:
        for name in ("alpha", "beta"):
            ok = {"alpha": 1.0, "beta": 1.0}
            ok[name] = parse_step_values(alpha if name == "alpha" else beta)
            try:
                DCGSchedule.build(DCGVariant.ID_THEN_TEXT, ok["alpha"], ok["beta"], steps)
            except ValueError as error:
                errors.append(str(error))
    return values[0], values[1], errors


def test_schedule_check_refuses_what_the_server_refuses(browser, comfy_server) -> None:
    page, _ = open_app(browser, comfy_server)
    script = extension_url(page, "dcg_schedule")
    results = page.evaluate(
        """async ([script, cases]) => {
            const { scheduleCheck } = await import(script);
            return cases.map(([alpha, beta, steps]) => scheduleCheck(alpha, beta, steps));
        }""",
        [script, SCHEDULE_CASES],
    )
    page.close()
    for (alpha, beta, steps), result in zip(SCHEDULE_CASES, results, strict=True):
        want_alpha, want_beta, want_errors = server_verdict(alpha, beta, steps)
        assert result["alpha"] == pytest.approx(want_alpha) if want_alpha else result["alpha"] is None
        assert result["beta"] == pytest.approx(want_beta) if want_beta else result["beta"] is None
        got = [problem["error"] for problem in result["problems"]]
        assert bool(got) == bool(want_errors), f"{alpha!r} / {beta!r} at {steps} steps: {got} vs {want_errors}"
        if all("values for" in error for error in want_errors):
            assert got == want_errors, "the warning is not the server's own message"
    # Written out for the published schedule at 6 steps: both lists have 4 values.
    assert [p["name"] for p in results[1]["problems"]] == ["alpha", "beta"]
    assert results[1]["problems"][0]["error"].startswith("alpha has 4 values for 6 steps")
    assert results[2]["problems"][0]["name"] == "beta" and len(results[2]["problems"]) == 1


def test_schedule_warning_follows_the_sampler_steps(browser, comfy_server, baseline_errors, test_output: Path) -> None:
    page, errors = open_app(browser, comfy_server)
    workflow = load_workflow(page, "fastface_am2_dcg")
    guider = node_id(workflow, "BoLIDDecoupledCFGGuider")
    scheduler = node_id(workflow, "BasicScheduler")
    page.evaluate(
        """([guider, scheduler]) => {
            const [g, s] = [guider, scheduler].map((id) => window.app.graph.getNodeById(id));
            s.pos = [g.pos[0] + g.size[0] + 40, g.pos[1]];
        }""",
        [guider, scheduler],
    )
    page.evaluate(FOCUS, [guider])

    def shown_at(steps: int) -> dict:
        page.evaluate(SET_WIDGET, [scheduler, "steps", steps])
        return drawn(page, guider, "bolidScheduleShown")

    matching = shown_at(4)
    assert matching["steps"] == 4 and matching["warnings"] == [] and matching["lines"] == []
    assert matching["alpha"] == [1, 1.5, 1.5, 1] and matching["beta"] == [1, 3, 3, 1]
    screenshot(page, [guider, scheduler], test_output, "dcg_schedule")

    mismatched = shown_at(6)
    assert mismatched["steps"] == 6
    assert [w.split(":")[0] for w in mismatched["warnings"]] == [
        "alpha has 4 values for 6 steps",
        "beta has 4 values for 6 steps",
    ]
    assert mismatched["lines"], "the warning was not drawn"
    frame = page.evaluate(
        """(id) => {
            const node = window.app.graph.getNodeById(id);
            const canvas = window.app.canvas;
            const [x, y] = canvas.ds.convertOffsetToCanvas([node.pos[0] - 3, node.pos[1] + node.size[1] / 2]);
            const ratio = canvas.canvas.width / canvas.canvas.getBoundingClientRect().width;
            return Array.from(canvas.ctx.getImageData(Math.round(x * ratio), Math.round(y * ratio), 1, 1).data);
        }""",
        guider,
    )
    assert frame[0] > 200 and frame[1] < 120 and frame[2] < 120, f"no red frame around the node: {frame}"
    screenshot(page, [guider, scheduler], test_output, "dcg_schedule_warning")

    assert shown_at(4)["warnings"] == [], "the warning stayed after the steps matched again"
    page.evaluate(SET_WIDGET, [guider, "alpha", "1.5"])
    single = shown_at(6)
    assert [w.split(" ")[0] for w in single["warnings"]] == ["beta"], "one alpha value serves every step"
    page.close()
    no_added_errors(errors, baseline_errors)


def test_sampler_steps_are_read_through_sigma_nodes(browser, comfy_server) -> None:
    """Step counts as core's scheduler code makes them (comfy_extras/nodes_custom_sampler.py and friends)."""
    page, _ = open_app(browser, comfy_server)
    script = extension_url(page, "dcg_schedule")
    steps = page.evaluate(
        """async (script) => {
            const { samplerSteps } = await import(script);
            const LiteGraph = window.LiteGraph;
            const graph = window.app.graph;
            graph.clear();
            const add = (type, widgets = {}) => {
                const node = LiteGraph.createNode(type);
                graph.add(node);
                for (const [name, value] of Object.entries(widgets)) {
                    node.widgets.find((w) => w.name === name).value = value;
                }
                return node;
            };
            const guider = add("BoLIDDecoupledCFGGuider");
            const sampler = add("SamplerCustomAdvanced");
            guider.connect(0, sampler, sampler.findInputSlot("guider"));
            const feed = (node, slot = 0) => {
                node.connect(slot, sampler, sampler.findInputSlot("sigmas"));
                return samplerSteps(guider).map((s) => s.steps);
            };
            const out = {};
            out.basic = feed(add("BasicScheduler", { steps: 7, denoise: 0.5 }));
            const split = add("SplitSigmas", { step: 2 });
            add("BasicScheduler", { steps: 6 }).connect(0, split, split.findInputSlot("sigmas"));
            out.high = feed(split, 0);
            out.low = feed(split, 1);
            out.ays_half = feed(add("AlignYourStepsScheduler", { steps: 10, denoise: 0.25 }));
            out.ays_up = feed(add("AlignYourStepsScheduler", { steps: 10, denoise: 0.35 }));
            out.turbo = feed(add("SDTurboScheduler", { steps: 4, denoise: 0.3 }));
            const reroute = add("Reroute");
            add("KarrasScheduler", { steps: 9 }).connect(0, reroute, 0);
            out.karras_rerouted = feed(reroute);
            const denoiseSplit = add("SplitSigmasDenoise", { denoise: 0.5 });
            add("BasicScheduler", { steps: 5 }).connect(0, denoiseSplit, denoiseSplit.findInputSlot("sigmas"));
            out.denoise_high = feed(denoiseSplit, 0);
            out.denoise_low = feed(denoiseSplit, 1);
            const other = add("SamplerCustomAdvanced");
            guider.connect(0, other, other.findInputSlot("guider"));
            out.two_samplers = samplerSteps(guider).map((s) => s.steps).sort();
            return out;
        }""",
        script,
    )
    page.close()
    # BasicScheduler keeps `steps` whatever the denoise; AYS and GITS scale by round(steps * denoise), half to even;
    # SD Turbo runs min(steps, int(10 * denoise)); SplitSigmas cuts at `step`; SplitSigmasDenoise at
    # round(steps * denoise) from the end (round(2.5) = 2).
    assert steps == {
        "basic": [7], "high": [2], "low": [4], "ays_half": [2], "ays_up": [4], "turbo": [3],
        "karras_rerouted": [9], "denoise_high": [3], "denoise_low": [2], "two_samplers": [2, None],
    }  # fmt: skip


# --- the region preview -------------------------------------------------------------------------------------------


def expected_owners(masks: list[np.ndarray]) -> np.ndarray:
    """The server's rule written plainly: the largest mask value if it is at least 0.5, ties to the lower index."""
    height, width = masks[0].shape
    owners = np.full((height, width), -1)
    for y in range(height):
        for x in range(width):
            best = None
            for index, mask in enumerate(masks):
                if mask[y, x] >= 0.5 and (best is None or mask[y, x] > masks[best][y, x]):
                    best = index
            owners[y, x] = -1 if best is None else best
    return owners


def test_region_preview_numbers_the_people_of_the_shipped_workflow(
    browser, comfy_server, baseline_errors, test_output: Path
) -> None:
    page, errors = open_app(browser, comfy_server)
    workflow = load_workflow(page, "facestudio_two_people_face_and_body")
    first, second = node_id(workflow, "BoLIDAddRegion", 0), node_id(workflow, "BoLIDAddRegion", 1)
    preview = node_id(workflow, "BoLIDRegionsPreview")
    page.evaluate(FOCUS, [first, second, preview])
    shown = {node: drawn(page, node, "bolidRegionsShown", "!shown.loading") for node in (first, second, preview)}
    pixels = np.asarray(Image.open(comfy_server.base_directory / "input" / REGIONS_IMAGE).convert("RGB"))
    masks = [pixels[..., channel] / 255.0 for channel in (0, 1)]  # LoadImageMask red, then green
    want = expected_owners(masks)
    want_counts = {str(owner): int((want == owner).sum()) for owner in (-1, 0, 1)}
    assert shown[first]["numbers"] == [0] and shown[first]["lines"][0] == "identity 0: face + body"
    assert shown[second]["numbers"] == [0, 1] and shown[second]["lines"][0] == "identity 1: face + body"
    assert shown[preview]["numbers"] == [0, 1] and shown[preview]["size"] == [IMAGE_SIZE, IMAGE_SIZE]
    assert shown[preview]["counts"] == want_counts and shown[preview]["problems"] == []
    labels = {label["number"]: (label["x"], label["y"]) for label in shown[preview]["labels"]}
    for owner in (0, 1):
        ys, xs = np.nonzero(want == owner)
        assert labels[owner] == pytest.approx(((xs.mean() + 0.5) / IMAGE_SIZE, (ys.mean() + 0.5) / IMAGE_SIZE))
    screenshot(page, [first, second, preview], test_output, "regions")
    page.close()
    no_added_errors(errors, baseline_errors)


def test_region_preview_resolves_overlaps_like_the_server(browser, comfy_server, test_output: Path) -> None:
    """Four overlapping people: red, green, blue channels and an alpha channel (LoadImage's MASK is 1 - alpha)."""
    rng = np.random.default_rng(13)
    levels = np.array([0, 64, 127, 128, 200, 255], dtype=np.uint8)  # 127/255 < 0.5 <= 128/255; equal values tie
    rgb = levels[rng.integers(0, len(levels), (40, 56, 3))]
    alpha = levels[rng.integers(0, len(levels), (40, 56))]
    name = f"web_overlap_{uuid.uuid4().hex[:8]}"
    Image.fromarray(rgb).save(comfy_server.base_directory / "input" / f"{name}_rgb.png")
    rgba = np.dstack([np.zeros_like(rgb), alpha])
    Image.fromarray(rgba, "RGBA").save(comfy_server.base_directory / "input" / f"{name}_rgba.png")

    page, _ = open_app(browser, comfy_server)
    preview = page.evaluate(
        """([rgb, rgba]) => {
            const LiteGraph = window.LiteGraph;
            const graph = window.app.graph;
            graph.clear();
            let regions = null;
            const add = (type, pos, widgets = {}) => {
                const node = LiteGraph.createNode(type);
                node.pos = pos;
                graph.add(node);
                for (const [name, value] of Object.entries(widgets)) {
                    node.widgets.find((w) => w.name === name).value = value;
                }
                return node;
            };
            const chain = (maskNode, slot, row) => {
                const region = add("BoLIDAddRegion", [420, row * 260]);
                maskNode.connect(slot, region, region.findInputSlot("mask"));
                if (regions) regions.connect(0, region, region.findInputSlot("regions"));
                regions = region;
            };
            ["red", "green", "blue"].forEach((channel, row) => {
                chain(add("LoadImageMask", [0, row * 260], { image: rgb, channel }), 0, row);
            });
            chain(add("LoadImage", [0, 3 * 260], { image: rgba }), 1, 3);
            const preview = add("BoLIDRegionsPreview", [800, 0]);
            regions.connect(0, preview, preview.findInputSlot("regions"));
            preview.setSize([400, 400]);
            return preview.id;
        }""",
        [f"{name}_rgb.png", f"{name}_rgba.png"],
    )
    page.evaluate(FOCUS, [preview])
    shown = drawn(page, preview, "bolidRegionsShown", "!shown.loading")
    owners = page.evaluate(f"() => Array.from(window.app.graph.getNodeById({preview}).bolidRegionCache.owners)")
    screenshot(page, [preview], test_output, "regions_overlap", readme=False)
    page.close()
    masks = [rgb[..., channel] / 255.0 for channel in range(3)] + [1.0 - alpha / 255.0]
    want = expected_owners(masks)
    assert shown["numbers"] == [0, 1, 2, 3] and shown["size"] == [56, 40]
    assert np.array_equal(np.asarray(owners).reshape(40, 56), want)


# --- socket colours -----------------------------------------------------------------------------------------------

COLOURS = """(types) => {
    const canvas = window.app.canvas;
    return Object.fromEntries(types.map((t) => [t, {
        slot: canvas.default_connection_color_byType[t] ?? "",
        link: canvas.constructor.link_type_colors[t] ?? "",
    }]));
}"""


def test_every_pack_type_has_its_own_socket_colour(browser, comfy_server, client, baseline_errors) -> None:
    info = client.object_info()
    pack_types = {
        name
        for node in info.values()
        for name in [*node.get("output", []), *(spec[0] for spec in node.get("input", {}).get("required", {}).values())]
        if isinstance(name, str) and name.startswith("BOLID_")
    }
    page, errors = open_app(browser, comfy_server)
    for palette in ("dark", "light", "dark"):  # a palette load resets every type it does not name
        page.evaluate("(id) => window.app.extensionManager.setting.set('Comfy.ColorPalette', id)", palette)
        page.wait_for_timeout(300)
        colours = page.evaluate(COLOURS, sorted(pack_types))
        missing = sorted(t for t in pack_types if not colours[t]["slot"] or colours[t]["slot"] != colours[t]["link"])
        assert not missing, f"{palette} palette: no socket/link colour for {missing}"
        assert len({colours[t]["slot"].lower() for t in pack_types}) == len(pack_types), "two types share a colour"
    page.close()
    no_added_errors(errors, baseline_errors)

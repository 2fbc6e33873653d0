"""Tier comfy: the miniature experiment's small variant, on the shipped miniature weights, through the pack's nodes.

Held-out people (drawn with a seed of their own: none is a training person), one caption and one noise per person
shared by every condition. It asserts what fixed seeds hold on any machine: the body ID from 20 views cuts the
measured proportion error of text alone by at least MIN_REDUCTION, and the body ID saved and loaded through BoLID
Save / Load Body ID gives the very same images. The benchmark (benchmarks/miniature_body_id.py) is the full run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bolid_core.miniature import world
from bolid_core.miniature.experiment import Condition, common_people, make_heldout, measure_condition, paired_reduction

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED = REPO_ROOT / "miniature_models" / "bolid"
HELDOUT_SEED, PEOPLE, VIEWS, PROMPTS = 0, 16, 20, 2
SAMPLER_STEPS, CFG = 16, 4.0
HEIGHT_INDEX = world.PROPORTION_NAMES.index("height")
# The benchmark's cuts (README): 18 % of the mean proportion error, 66 % of the height error. These seeds give 23 %
# and 58 %; the margins are about half that, since 32 images per condition are a small sample (another seed gave 7 %
# and 30 %: the effect is real but modest, and the measurer is noisy on generated images).
MIN_REDUCTION = 0.10
MIN_HEIGHT_REDUCTION = 0.30


@pytest.fixture()
def miniature_folders(comfy_nodes, tmp_path):
    import folder_paths

    saved = folder_paths.folder_names_and_paths["bolid"]
    folder_paths.folder_names_and_paths["bolid"] = ([str(tmp_path), str(SHIPPED)], {".safetensors"})
    folder_paths.filename_list_cache.clear()
    yield tmp_path
    folder_paths.folder_names_and_paths["bolid"] = saved
    folder_paths.filename_list_cache.clear()


def test_body_id_beats_text_alone_and_survives_save_and_load(comfy_nodes, miniature_folders) -> None:
    from bolid_core.comfy.miniature_experiment import Generator, load_models, person_images

    models = load_models(
        comfy_nodes, "bolid_miniature_base.safetensors", "bolid/bolid_miniature_adapter.safetensors",
        "bolid_miniature_adapter_body_vae.safetensors", None,
    )  # fmt: skip
    generator = Generator(comfy_nodes, models, SAMPLER_STEPS, CFG)
    stacks: dict[Condition, list[np.ndarray]] = {Condition.TEXT: [], Condition.BODY_MANY: []}
    truths = []
    for index, person in enumerate(make_heldout(HELDOUT_SEED, PEOPLE, VIEWS, PROMPTS)):
        images = person_images(generator, person, index, HELDOUT_SEED + index, (1, VIEWS), with_reference=False)
        assert np.array_equal(images[Condition.BODY_MANY], images[Condition.BODY_LOADED])
        assert (miniature_folders / "bodies" / f"miniature_heldout_{index:03d}.safetensors").is_file()
        for condition, stack in stacks.items():
            stack.append(images[condition])
        truths.append(world.true_proportions(person.body))
    text, body = (measure_condition(stacks[condition], truths) for condition in (Condition.TEXT, Condition.BODY_MANY))
    results = {Condition.TEXT: text, Condition.BODY_MANY: body}
    keep = common_people(results)
    assert keep.sum() >= PEOPLE // 2, f"the measurer found a figure for only {keep.sum()} of {PEOPLE} people"
    overall = paired_reduction(text, body, seed=0, keep=keep)["value"]
    height = HEIGHT_INDEX
    text_height = np.nanmean(text.per_proportion[keep][..., height])
    body_height = np.nanmean(body.per_proportion[keep][..., height])
    print(f"miniature test: error cut {overall:.2f}, height error {text_height:.3f} -> {body_height:.3f}")
    assert overall >= MIN_REDUCTION, f"the 20-view body ID cuts the proportion error of text alone by {overall:.2f}"
    assert body_height <= (1.0 - MIN_HEIGHT_REDUCTION) * text_height, (text_height, body_height)

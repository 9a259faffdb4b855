import pytest

from crawler.detect import detect_version, mentions_inpainting, strip_inpainting, version_label


@pytest.mark.parametrize(
    "text",
    [
        "v7-inpainting",
        "V6.0 B1 inpainting (VAE)",
        "v1.2.1-inp",
        "majicmixRealistic_v7-inpainting.safetensors",
        "dreamshaper_8Inpainting.safetensors",
        "epiCPhotoGasm InPainting",
        "Model impainting v2",
        "v3 inpaiting",
        "v3 in painting",
        "v3 in-painting",
        "INPAINT",
    ],
)
def test_inpainting_spellings_are_recognised(text):
    assert mentions_inpainting(text)


@pytest.mark.parametrize(
    "text", ["ThinPaintLine", "thinpaintline_v10.safetensors", "Input Mix", "non-inpainting v2", "Painting Style", ""]
)
def test_words_that_merely_contain_paint_are_not_inpainting(text):
    assert not mentions_inpainting(text)


def test_mislabelled_standard_version_is_detected_from_its_name():
    found = detect_version(version_name="v1.2.1-inp", base_model_type="Standard", file_names=["x.safetensors"])
    assert found.is_inpainting
    assert 'typed "Standard"' in found.evidence[0]


def test_flag_alone_is_enough_and_names_add_confidence():
    flag_only = detect_version(version_name="X Plus Plus", base_model_type="Inpainting", file_names=[])
    both = detect_version(version_name="v8 inpainting", base_model_type="Inpainting", file_names=[])
    assert flag_only.is_inpainting and both.is_inpainting
    assert both.confidence > flag_only.confidence


def test_model_name_and_tags_count_only_for_dedicated_models():
    kwargs = dict(
        version_name="v3.2",
        base_model_type=None,
        file_names=[],
        model_name="CyberRealistic InPainting",
        model_tags=["inpainting"],
    )
    assert detect_version(**kwargs, model_is_dedicated=True).is_inpainting
    assert not detect_version(**kwargs, model_is_dedicated=False).is_inpainting


def test_tag_alone_does_not_make_an_inpainting_release():
    found = detect_version(
        version_name="v1",
        base_model_type="Standard",
        file_names=[],
        model_name="Anything",
        model_tags=["inpainting"],
        model_is_dedicated=True,
    )
    assert not found.is_inpainting


def test_pix2pix_and_refiner_types_are_never_inpainting():
    for bmt in ("Pix2Pix", "Refiner"):
        assert not detect_version(version_name="v1 inpainting", base_model_type=bmt, file_names=[]).is_inpainting


def test_version_labels_pair_inpainting_with_normal_versions():
    assert version_label("v7-inpainting") == version_label("v7") == "7"
    assert version_label("V6.0 B1 inpainting (VAE)") == version_label("V6.0 B1 (VAE)")
    assert strip_inpainting("majicMIX realistic v7-inpainting") == "majic mix realistic v7"

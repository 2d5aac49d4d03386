"""Attribute directions: fitted from labels, from image statistics, by PCA, or on pairs.

Strength 1 moves an attribute by about one standard deviation of the attribute
over the images it was fitted on (a feature editor moves a class attribute, the
scene's shape, by one whole class instead). Labels come from a CSV (CelebA's
``list_attr_celeba.txt`` too), folder names, the scenes' true factors, or
``auto`` statistics of the pixels (brightness, saturation, warmth, contrast,
sharpness), so any unlabelled collection gets sliders. The kinds of direction:

- ``DirectionField``: ``read`` maps latents to attributes, ``write`` maps them
  back, and an edit adds ``write(y + s) - write(y)``; over the global group
  (any image size) or every group (the fitting size). It bends with the latent
  space and holds the other attributes fitted with it.
- ``MomentDirections``: per sd of the attribute, the change of every latent
  channel's mean and log spread, and of the kept detail's log spread; any size.
- ``FeatureFlows`` (``auto`` statistics only): per attribute, a linear flow of
  the stage-1 features at every position, fitted on pairs of each picture and
  the same picture adjusted in pixels (brighter, more saturated, ...); any size.
- ``FeatureEditor``: a small network on the stage-1 features trained on
  before/after pairs (scenes and their counterfactuals, or the user's pictures
  from a pair table); the fitting size.
- vectors in one group: ``Cov(z, y) / sd(y)`` (a field's linear summary), the
  ``pca`` axes of the global posterior means, or any the caller registers.

Edits keep the detail the latents leave out (``codes.detail``), so the rest of
the image survives.

Where each part lives (data flows down this list's imports, never up to the
pipelines or the CLI):

- ``base``: ``LatentEdits``, flattening groups, ``project_out``, ``solve_ridge``
- ``labels``: image statistics, label and pair tables, folder and scene labels
- ``vectors``: label directions (``Cov(z, y) / sd(y)``) and PCA axes
- ``field``: ``DirectionField``
- ``moments``: ``MomentDirections``
- ``flows``: ``FeatureFlows``, its pixel adjustments, ``flow_features``
- ``editor``: ``FeatureEditor``, the network
- ``kinds``: ``DirectionSet`` and rebuilding saved sets, checked against the model
  before anything is allocated (``read_direction_sets``, ``load_direction_set``)
- ``ranges``: the strengths each direction takes (``check_strength``)
- ``fitting``: encoding images through a pipeline, ``fit_directions``, ``fit_pca``
- ``editor_fitting``: ``fit_scene_editor``, ``fit_pair_editor``, ``pipeline_editor``
"""

from hvae.directions.base import (
    LatentEdits,
    flatten_groups,
    project_out,
    solve_ridge,
    unflatten_groups,
)
from hvae.directions.editor import FeatureEditor
from hvae.directions.editor_fitting import (
    fit_pair_editor,
    fit_scene_editor,
    pipeline_editor,
    scene_pairs,
)
from hvae.directions.field import DirectionField
from hvae.directions.fitting import (
    DIRECTION_KINDS,
    channel_moments,
    fit_directions,
    fit_pca,
    global_means,
    group_latents,
)
from hvae.directions.flows import (
    AUTO_ADJUSTMENTS,
    FLOW_BANDS,
    FLOW_BOX,
    FeatureFlows,
    feature_bands,
    flow_features,
)
from hvae.directions.kinds import (
    DirectionSet,
    ModelShapes,
    load_direction_set,
    read_direction_sets,
)
from hvae.directions.labels import (
    AUTO_STATISTICS,
    auto_labels,
    check_labels,
    folder_labels,
    image_statistics,
    labels_for,
    read_label_table,
    read_pair_table,
    scene_labels,
)
from hvae.directions.moments import MomentDirections
from hvae.directions.ranges import DEFAULT_STRENGTH_RANGE, check_strength, read_strength_range
from hvae.directions.vectors import fit_label_direction, fit_pca_directions

__all__ = [
    "AUTO_ADJUSTMENTS",
    "AUTO_STATISTICS",
    "DEFAULT_STRENGTH_RANGE",
    "DIRECTION_KINDS",
    "FLOW_BANDS",
    "FLOW_BOX",
    "DirectionField",
    "DirectionSet",
    "FeatureEditor",
    "FeatureFlows",
    "LatentEdits",
    "ModelShapes",
    "MomentDirections",
    "auto_labels",
    "channel_moments",
    "check_labels",
    "check_strength",
    "feature_bands",
    "fit_directions",
    "fit_label_direction",
    "fit_pair_editor",
    "fit_pca",
    "fit_pca_directions",
    "fit_scene_editor",
    "flatten_groups",
    "flow_features",
    "folder_labels",
    "global_means",
    "group_latents",
    "image_statistics",
    "labels_for",
    "load_direction_set",
    "pipeline_editor",
    "project_out",
    "read_direction_sets",
    "read_label_table",
    "read_pair_table",
    "read_strength_range",
    "scene_labels",
    "scene_pairs",
    "solve_ridge",
    "unflatten_groups",
]

"""Label Studio as an annotation tool: label config, brush masks, bindings, task images, webhooks.

The HTTP side (the ML backend protocol under ``/labelstudio``) lives in
``service/integrations/labelstudio.py``; everything here works without FastAPI:

- the label config: the ``<BrushLabels>`` tag (``from_name``/``to_name``), its
  ``<Label>`` values, and the task data key of the image it labels;
- the mapping of Label Studio label names to a project's classes (name or
  translation), and a project spec made from the config on first ``/setup``
  (:mod:`.label_config`);
- brush RLE (Label Studio's own format, through ``label_studio_sdk``'s codec), the
  regions ``/predict`` answers and the mask an annotation paints (:mod:`.brush`);
- the webhook payloads Label Studio sends (:mod:`.payloads`);
- bindings (Label Studio project -> prelabel project), task -> image map, task
  images (:mod:`.bindings`; fetching them over HTTP is the service's
  ``service/integrations/labelstudio_images.py``);
- webhook events: stored first, processed afterwards into corrections,
  withdrawals and training runs (:mod:`.events`).

Arrays are row-major ``(H, W)``. Brush RLE encodes the flattened ``(H, W, 4)``
RGBA image Label Studio paints; the alpha channel is the mask.
"""

from prelabel.integrations.labelstudio.bindings import (
    Binding,
    TaskImageSource,
    bind_project,
    decode_data_url,
    get_binding,
    list_bindings,
    ls_project_key,
    record_task_draft,
    register_task_image,
    setup_binding,
    task_image,
    task_image_ref,
)
from prelabel.integrations.labelstudio.brush import (
    BrushRegion,
    BrushValue,
    TaskPrediction,
    annotation_mask,
    decode_brush,
    draft_regions,
    encode_brush,
)
from prelabel.integrations.labelstudio.events import (
    MAX_EVENT_ATTEMPTS,
    SOURCE,
    EventContext,
    annotator_name,
    apply_event,
    process_pending_events,
    record_event,
    webhook_project_id,
)
from prelabel.integrations.labelstudio.label_config import (
    MAX_LABEL_CONFIG_CHARS,
    BrushConfig,
    LabelMapping,
    LsLabel,
    map_labels,
    parse_label_config,
    project_spec_from_config,
)
from prelabel.integrations.labelstudio.payloads import (
    ANNOTATION_ACTIONS,
    HANDLED_ACTIONS,
    LsAnnotation,
    LsAnnotationRef,
    LsProjectRef,
    LsResult,
    LsResultValue,
    LsTask,
    LsUser,
    LsWebhook,
    StoredEvent,
)
from prelabel.integrations.labelstudio.smart import (
    PredictParams,
    SmartContext,
    SmartRegion,
    refined_region,
    smart_class,
    smart_clicks,
)

__all__ = [
    "ANNOTATION_ACTIONS",
    "HANDLED_ACTIONS",
    "MAX_EVENT_ATTEMPTS",
    "MAX_LABEL_CONFIG_CHARS",
    "SOURCE",
    "Binding",
    "BrushConfig",
    "BrushRegion",
    "BrushValue",
    "EventContext",
    "LabelMapping",
    "LsAnnotation",
    "LsAnnotationRef",
    "LsLabel",
    "LsProjectRef",
    "LsResult",
    "LsResultValue",
    "LsTask",
    "LsUser",
    "LsWebhook",
    "PredictParams",
    "SmartContext",
    "SmartRegion",
    "StoredEvent",
    "TaskImageSource",
    "TaskPrediction",
    "annotation_mask",
    "annotator_name",
    "apply_event",
    "bind_project",
    "decode_brush",
    "decode_data_url",
    "draft_regions",
    "encode_brush",
    "get_binding",
    "list_bindings",
    "ls_project_key",
    "map_labels",
    "parse_label_config",
    "process_pending_events",
    "project_spec_from_config",
    "record_event",
    "record_task_draft",
    "refined_region",
    "register_task_image",
    "setup_binding",
    "smart_class",
    "smart_clicks",
    "task_image",
    "task_image_ref",
    "webhook_project_id",
]

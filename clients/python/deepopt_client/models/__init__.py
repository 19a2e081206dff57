"""Contains all the data models used in inputs/outputs"""

from .accuracy_guard import AccuracyGuard
from .accuracy_guard_metric import AccuracyGuardMetric
from .arrays import Arrays
from .artifact_read import ArtifactRead
from .artifact_read_kind import ArtifactReadKind
from .auto_budget import AutoBudget
from .auto_config import AutoConfig
from .auto_config_allowed_item import AutoConfigAllowedItem
from .auto_config_metric_type_0 import AutoConfigMetricType0
from .auto_config_objective import AutoConfigObjective
from .benchmark_read import BenchmarkRead
from .benchmark_settings import BenchmarkSettings
from .benchmark_settings_graph_optimization_level import BenchmarkSettingsGraphOptimizationLevel
from .bf_16_quantize_config import Bf16QuantizeConfig
from .compare_row import CompareRow
from .comparison import Comparison
from .dataset_read import DatasetRead
from .dataset_read_format import DatasetReadFormat
from .distill_config import DistillConfig
from .distill_config_augment_item import DistillConfigAugmentItem
from .distill_config_device import DistillConfigDevice
from .distill_config_mixed_precision import DistillConfigMixedPrecision
from .dynamic_quantize_config import DynamicQuantizeConfig
from .dynamic_quantize_config_fusion import DynamicQuantizeConfigFusion
from .dynamic_quantize_config_weight_dtype import DynamicQuantizeConfigWeightDtype
from .export_config import ExportConfig
from .field_problem import FieldProblem
from .fine_tune_settings import FineTuneSettings
from .fine_tune_settings_method import FineTuneSettingsMethod
from .fp_16_quantize_config import Fp16QuantizeConfig
from .full_finetune_config import FullFinetuneConfig
from .full_finetune_config_device import FullFinetuneConfigDevice
from .full_finetune_config_head import FullFinetuneConfigHead
from .full_finetune_config_mixed_precision import FullFinetuneConfigMixedPrecision
from .full_finetune_config_task import FullFinetuneConfigTask
from .info import Info
from .job_create import JobCreate
from .job_create_device import JobCreateDevice
from .job_create_outputs_type_0_item import JobCreateOutputsType0Item
from .job_error import JobError
from .job_read import JobRead
from .job_read_decisions_item import JobReadDecisionsItem
from .job_read_metrics_type_0 import JobReadMetricsType0
from .job_read_status import JobReadStatus
from .key_create import KeyCreate
from .key_created import KeyCreated
from .key_read import KeyRead
from .list_jobs_status_type_0 import ListJobsStatusType0
from .lora_finetune_config import LoraFinetuneConfig
from .lora_finetune_config_base_quantization_type_0 import LoraFinetuneConfigBaseQuantizationType0
from .lora_finetune_config_device import LoraFinetuneConfigDevice
from .lora_finetune_config_head import LoraFinetuneConfigHead
from .lora_finetune_config_mixed_precision import LoraFinetuneConfigMixedPrecision
from .lora_finetune_config_task import LoraFinetuneConfigTask
from .magnitude_prune_config import MagnitudePruneConfig
from .magnitude_prune_config_scope import MagnitudePruneConfigScope
from .metrics import Metrics
from .model_read import ModelRead
from .nm_prune_config import NMPruneConfig
from .nm_prune_config_hessian import NMPruneConfigHessian
from .nm_prune_config_selection import NMPruneConfigSelection
from .obs_prune_config import ObsPruneConfig
from .obs_prune_config_hessian import ObsPruneConfigHessian
from .obs_prune_config_scope import ObsPruneConfigScope
from .obs_prune_config_update import ObsPruneConfigUpdate
from .page_job_read import PageJobRead
from .page_model_read import PageModelRead
from .parallel_adapter_finetune_config import ParallelAdapterFinetuneConfig
from .parallel_adapter_finetune_config_device import ParallelAdapterFinetuneConfigDevice
from .parallel_adapter_finetune_config_head import ParallelAdapterFinetuneConfigHead
from .parallel_adapter_finetune_config_mixed_precision import ParallelAdapterFinetuneConfigMixedPrecision
from .parallel_adapter_finetune_config_task import ParallelAdapterFinetuneConfigTask
from .prefix_finetune_config import PrefixFinetuneConfig
from .prefix_finetune_config_device import PrefixFinetuneConfigDevice
from .prefix_finetune_config_head import PrefixFinetuneConfigHead
from .prefix_finetune_config_mixed_precision import PrefixFinetuneConfigMixedPrecision
from .prefix_finetune_config_task import PrefixFinetuneConfigTask
from .problem import Problem
from .response_healthz import ResponseHealthz
from .schedule import Schedule
from .series_adapter_finetune_config import SeriesAdapterFinetuneConfig
from .series_adapter_finetune_config_device import SeriesAdapterFinetuneConfigDevice
from .series_adapter_finetune_config_head import SeriesAdapterFinetuneConfigHead
from .series_adapter_finetune_config_mixed_precision import SeriesAdapterFinetuneConfigMixedPrecision
from .series_adapter_finetune_config_task import SeriesAdapterFinetuneConfigTask
from .spec import Spec
from .static_quantize_config import StaticQuantizeConfig
from .static_quantize_config_activation_dtype import StaticQuantizeConfigActivationDtype
from .static_quantize_config_calibration import StaticQuantizeConfigCalibration
from .static_quantize_config_fusion import StaticQuantizeConfigFusion
from .static_quantize_config_quant_format import StaticQuantizeConfigQuantFormat
from .structured_prune_config import StructuredPruneConfig
from .structured_prune_config_importance import StructuredPruneConfigImportance
from .structured_prune_config_scope import StructuredPruneConfigScope
from .structured_prune_config_units_type_0_item import StructuredPruneConfigUnitsType0Item
from .student_config import StudentConfig
from .student_config_init import StudentConfigInit
from .teacher_config import TeacherConfig
from .tensor_info import TensorInfo
from .upload_dataset_body import UploadDatasetBody
from .upload_model_body import UploadModelBody
from .webhook_delivery_read import WebhookDeliveryRead
from .webhook_delivery_read_status import WebhookDeliveryReadStatus
from .webhook_secret_read import WebhookSecretRead
from .webhook_secret_read_source import WebhookSecretReadSource
from .weight_only_quantize_config import WeightOnlyQuantizeConfig
from .weight_only_quantize_config_accuracy_level_type_0 import WeightOnlyQuantizeConfigAccuracyLevelType0
from .weight_only_quantize_config_algorithm import WeightOnlyQuantizeConfigAlgorithm
from .weight_only_quantize_config_fusion import WeightOnlyQuantizeConfigFusion
from .weight_only_quantize_config_weight_dtype import WeightOnlyQuantizeConfigWeightDtype

__all__ = (
    "AccuracyGuard",
    "AccuracyGuardMetric",
    "Arrays",
    "ArtifactRead",
    "ArtifactReadKind",
    "AutoBudget",
    "AutoConfig",
    "AutoConfigAllowedItem",
    "AutoConfigMetricType0",
    "AutoConfigObjective",
    "BenchmarkRead",
    "BenchmarkSettings",
    "BenchmarkSettingsGraphOptimizationLevel",
    "Bf16QuantizeConfig",
    "CompareRow",
    "Comparison",
    "DatasetRead",
    "DatasetReadFormat",
    "DistillConfig",
    "DistillConfigAugmentItem",
    "DistillConfigDevice",
    "DistillConfigMixedPrecision",
    "DynamicQuantizeConfig",
    "DynamicQuantizeConfigFusion",
    "DynamicQuantizeConfigWeightDtype",
    "ExportConfig",
    "FieldProblem",
    "FineTuneSettings",
    "FineTuneSettingsMethod",
    "Fp16QuantizeConfig",
    "FullFinetuneConfig",
    "FullFinetuneConfigDevice",
    "FullFinetuneConfigHead",
    "FullFinetuneConfigMixedPrecision",
    "FullFinetuneConfigTask",
    "Info",
    "JobCreate",
    "JobCreateDevice",
    "JobCreateOutputsType0Item",
    "JobError",
    "JobRead",
    "JobReadDecisionsItem",
    "JobReadMetricsType0",
    "JobReadStatus",
    "KeyCreate",
    "KeyCreated",
    "KeyRead",
    "ListJobsStatusType0",
    "LoraFinetuneConfig",
    "LoraFinetuneConfigBaseQuantizationType0",
    "LoraFinetuneConfigDevice",
    "LoraFinetuneConfigHead",
    "LoraFinetuneConfigMixedPrecision",
    "LoraFinetuneConfigTask",
    "MagnitudePruneConfig",
    "MagnitudePruneConfigScope",
    "Metrics",
    "ModelRead",
    "NMPruneConfig",
    "NMPruneConfigHessian",
    "NMPruneConfigSelection",
    "ObsPruneConfig",
    "ObsPruneConfigHessian",
    "ObsPruneConfigScope",
    "ObsPruneConfigUpdate",
    "PageJobRead",
    "PageModelRead",
    "ParallelAdapterFinetuneConfig",
    "ParallelAdapterFinetuneConfigDevice",
    "ParallelAdapterFinetuneConfigHead",
    "ParallelAdapterFinetuneConfigMixedPrecision",
    "ParallelAdapterFinetuneConfigTask",
    "PrefixFinetuneConfig",
    "PrefixFinetuneConfigDevice",
    "PrefixFinetuneConfigHead",
    "PrefixFinetuneConfigMixedPrecision",
    "PrefixFinetuneConfigTask",
    "Problem",
    "ResponseHealthz",
    "Schedule",
    "SeriesAdapterFinetuneConfig",
    "SeriesAdapterFinetuneConfigDevice",
    "SeriesAdapterFinetuneConfigHead",
    "SeriesAdapterFinetuneConfigMixedPrecision",
    "SeriesAdapterFinetuneConfigTask",
    "Spec",
    "StaticQuantizeConfig",
    "StaticQuantizeConfigActivationDtype",
    "StaticQuantizeConfigCalibration",
    "StaticQuantizeConfigFusion",
    "StaticQuantizeConfigQuantFormat",
    "StructuredPruneConfig",
    "StructuredPruneConfigImportance",
    "StructuredPruneConfigScope",
    "StructuredPruneConfigUnitsType0Item",
    "StudentConfig",
    "StudentConfigInit",
    "TeacherConfig",
    "TensorInfo",
    "UploadDatasetBody",
    "UploadModelBody",
    "WebhookDeliveryRead",
    "WebhookDeliveryReadStatus",
    "WebhookSecretRead",
    "WebhookSecretReadSource",
    "WeightOnlyQuantizeConfig",
    "WeightOnlyQuantizeConfigAccuracyLevelType0",
    "WeightOnlyQuantizeConfigAlgorithm",
    "WeightOnlyQuantizeConfigFusion",
    "WeightOnlyQuantizeConfigWeightDtype",
)

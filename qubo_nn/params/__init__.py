"""Parameter tensors as the block solvers see them: row views, column-group plans, ``apply``."""
from .layout import BlockPlan, apply_levels, column_plan, row_view

__all__ = ["BlockPlan", "apply_levels", "column_plan", "row_view"]

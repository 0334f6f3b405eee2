"""Names several modules share, each written once."""

# The motivating experiment: all layers with these six switched on cost top-1 (the "all + aug"
# baseline, the thread's explanations' default bundle, the confirmation's comparison).
MOTIVATING = ("hflip", "crop", "blur", "sharpen", "contrast", "affine")
BASELINES = ("head only", "all layers", "all + aug")
FINISHED = ("completed", "early_stopped")  # trial statuses whose results count
CLEAN = "(no augmentation)"  # the label of a designed run with every augmentation off

"""Stage 2's plumbing: checkpoints, the export format and its reader, the one safe torch loader, schedules, distributed, the run log."""

"""Batch analysis: many images analysed with one model as one job, each image becoming a case
through the same workflow as ``POST /api/v1/predict``; the job row and one row per item record
where the batch stands, so a batch interrupted half-way continues where it stopped."""

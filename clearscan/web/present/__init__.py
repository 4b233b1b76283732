"""What the pages show, as typed page contexts built from what the services return: one module
per page family, plus the training chart's SVG geometry (`charts`), the evaluation tables
(`evaluations`) and number formatting (`numbers`). Nothing here touches the database."""

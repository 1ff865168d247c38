"""Synthetic BMDeep-shaped datasets, apart from the production readers: the MIRAX writer
(`mirax_writer`), the procedural smear it draws (`smear_content`), the clinical, lab and
annotation tables (`tables`) and the demo collection (`demo`)."""

"""The invoicing service: a PDF invoice for every placed order, rendered in a process pool."""

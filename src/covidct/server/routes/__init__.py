"""One module per route group: predict, model, health, the page and the API docs."""

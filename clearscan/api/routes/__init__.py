"""The JSON API's routers, one module per family (as ``web/pages`` holds the pages): each
parses the request, calls its domain's service and shapes the reply."""

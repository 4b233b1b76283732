"""The pages, one module per family. Each handler parses its form or query, calls a domain
service and renders a page context from `clearscan.web.present`; `clearscan.web.router` mounts
them."""

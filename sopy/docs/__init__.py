"""The API's documentation as served by Sopy: the OpenAPI document and the Swagger UI page."""

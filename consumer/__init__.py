"""Shipment cancel processor: order-cancelled events in, one result per shipment out."""

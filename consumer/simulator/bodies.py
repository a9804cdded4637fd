"""Success bodies: ShipStation ``shipment``/``label``/list and MVMNT ``Shipment``.

Static parts are built once; a body is a shallow merge of those and the shipment's state.
Field names and enum values follow the providers' OpenAPI specs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from consumer.simulator.shipments import Label, MvmntShipment, ShipStationShipment, label_status

_SHIP_FROM = {
    "name": "Shipping Department",
    "company_name": "Example Outfitters",
    "phone": "512-555-0100",
    "address_line1": "4009 Marathon Blvd",
    "city_locality": "Austin",
    "state_province": "TX",
    "postal_code": "78756",
    "country_code": "US",
    "address_residential_indicator": "no",
}
_SHIP_TO = {
    "name": "Amanda Miller",
    "phone": "408-555-0199",
    "address_line1": "525 S Winchester Blvd",
    "city_locality": "San Jose",
    "state_province": "CA",
    "postal_code": "95128",
    "country_code": "US",
    "address_residential_indicator": "yes",
}
_WEIGHT = {"value": 1.5, "unit": "pound"}
_SHIPMENT_STATIC: dict[str, Any] = {
    "carrier_id": "se-1234567",
    "service_code": "usps_priority_mail",
    "ship_to": _SHIP_TO,
    "ship_from": _SHIP_FROM,
    "return_to": _SHIP_FROM,
    "confirmation": "none",
    "advanced_options": {"contains_alcohol": False, "non_machinable": False},
    "insurance_provider": "none",
    "items": [],
    "tags": [],
    "packages": [{"package_code": "package", "weight": _WEIGHT}],
    "total_weight": _WEIGHT,
}
_LABEL_STATIC: dict[str, Any] = {
    "shipment_cost": {"currency": "usd", "amount": 7.48},
    "insurance_cost": {"currency": "usd", "amount": 0.0},
    "is_return_label": False,
    "is_international": False,
    "carrier_id": "se-1234567",
    "carrier_code": "stamps_com",
    "service_code": "usps_priority_mail",
    "package_code": "package",
    "charge_event": "carrier_default",
    "label_format": "pdf",
    "display_scheme": "label",
    "label_layout": "4x6",
    "trackable": True,
    "confirmation": "none",
}


def shipstation_shipment(shipment: ShipStationShipment) -> dict[str, Any]:
    return {
        "shipment_id": shipment.shipment_id,
        "ship_date": shipment.created_at[:10],
        "created_at": shipment.created_at,
        "modified_at": shipment.modified_at,
        "shipment_status": shipment.status,
        **_SHIPMENT_STATIC,
    }


def shipstation_label(label: Label) -> dict[str, Any]:
    return {
        "label_id": label.label_id,
        "status": label_status(label),
        "shipment_id": label.shipment_id,
        "ship_date": label.created_at[:10],
        "created_at": label.created_at,
        "tracking_number": label.tracking_number,
        "tracking_status": "unknown" if label.voided else "in_transit",
        "voided": label.voided,
        "voided_at": label.voided_at,
        **_LABEL_STATIC,
    }


def shipstation_label_page(
    labels: list[Label], page: int, page_size: int, page_url: Callable[[int], str]
) -> dict[str, Any]:
    """``list_labels_response_body``: one page plus the paging links the spec requires."""
    total = len(labels)
    pages = -(-total // page_size)
    start = (page - 1) * page_size
    return {
        "labels": [shipstation_label(label) for label in labels[start : start + page_size]],
        "total": total,
        "page": page,
        "pages": pages,
        "links": {
            "first": {"href": page_url(1)},
            "last": {"href": page_url(max(pages, 1))},
            "prev": {"href": page_url(page - 1)} if page > 1 else {},
            "next": {"href": page_url(page + 1)} if page < pages else {},
        },
    }


def mvmnt_shipment(shipment: MvmntShipment) -> dict[str, Any]:
    return {
        "id": shipment.id,
        "key": shipment.key,
        "status": shipment.status,
        "createdAt": shipment.created_at,
        "updatedAt": shipment.updated_at,
        "deliveredAt": shipment.delivered_at,
        "totalRevenue": None,
        "totalCost": None,
        "margin": None,
        "marginPercent": None,
    }

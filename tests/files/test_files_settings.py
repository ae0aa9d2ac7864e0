"""Settings the Files emulator used to accept and drop: service properties (metrics, CORS) and a share's
access tier are stored and read back, or refused with Azure's error naming what is wrong."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import requests
from azure.core.exceptions import HttpResponseError
from azure.storage.fileshare import (
    AccountSasPermissions,
    CorsRule,
    Metrics,
    ResourceTypes,
    RetentionPolicy,
    ShareAccessTier,
    ShareClient,
    ShareServiceClient,
    generate_account_sas,
)

from infra.local.stack import DEV_ACCOUNT, DEV_KEY

pytestmark = pytest.mark.e2e
RULE = (
    b"<CorsRule><AllowedOrigins>*</AllowedOrigins><AllowedMethods>GET</AllowedMethods>"
    b"<MaxAgeInSeconds>1</MaxAgeInSeconds></CorsRule>"
)


def test_service_properties_are_stored_and_returned(private_emulator) -> None:
    # A private emulator: service properties are account-wide and would leak into other tests.
    emulator = private_emulator()
    service = ShareServiceClient.from_connection_string(emulator.connection_string)
    hour = Metrics(enabled=True, include_apis=True, retention_policy=RetentionPolicy(enabled=True, days=5))
    cors = [
        CorsRule(["www.xyz.com"], ["GET"]),
        CorsRule(["www.ab.com", "www.bc.com"], ["GET", "PUT"], max_age_in_seconds=500,
                 exposed_headers=["x-ms-meta-data*"], allowed_headers=["x-ms-meta-target*"]),
    ]  # fmt: skip
    service.set_service_properties(hour_metrics=hour, cors=cors)
    got = service.get_service_properties()
    assert got["hour_metrics"].enabled and got["hour_metrics"].include_apis
    assert got["hour_metrics"].retention_policy.days == 5
    assert not got["minute_metrics"].enabled  # not in the request: left as it was
    assert [(r.allowed_origins, r.allowed_methods, r.max_age_in_seconds) for r in got["cors"]] == [
        ("www.xyz.com", "GET", 0),
        ("www.ab.com,www.bc.com", "GET,PUT", 500),
    ]
    assert got["cors"][1].exposed_headers == "x-ms-meta-data*"

    # A later request that sets only minute metrics keeps the CORS rules and hour metrics.
    service.set_service_properties(minute_metrics=Metrics(enabled=True, include_apis=False,
                                   retention_policy=RetentionPolicy(enabled=True, days=1)))  # fmt: skip
    again = service.get_service_properties()
    assert again["minute_metrics"].enabled and len(again["cors"]) == 2 and again["hour_metrics"].enabled

    # The emulator keeps the setting across a restart, as the service does.
    emulator.stop()
    emulator.start()
    assert len(service.get_service_properties()["cors"]) == 2


@pytest.mark.parametrize(
    ("body", "code", "names"),
    [
        (b"<StorageServiceProperties><HourMetrics><Version>1.0</Version><Enabled>true</Enabled>"
         b"<IncludeAPIs>true</IncludeAPIs><RetentionPolicy><Enabled>true</Enabled><Days>400</Days>"
         b"</RetentionPolicy></HourMetrics></StorageServiceProperties>", "InvalidXmlNodeValue", "Days"),
        (b"<StorageServiceProperties><Cors><CorsRule><AllowedOrigins>*</AllowedOrigins><AllowedMethods>"
         b"FETCH</AllowedMethods><MaxAgeInSeconds>1</MaxAgeInSeconds></CorsRule></Cors>"
         b"</StorageServiceProperties>", "InvalidXmlNodeValue", "FETCH"),
        (b"<StorageServiceProperties><Cors>" + RULE * 6 + b"</Cors></StorageServiceProperties>",
         "InvalidXmlNodeValue", "at most 5"),
        (b"<StorageServiceProperties><HourMetrics>", "InvalidXmlDocument", "not syntactically valid"),
        (b"<Other/>", "InvalidXmlDocument", "StorageServiceProperties"),
    ],
)  # fmt: skip
def test_bad_service_properties_are_refused_and_nothing_changes(
    private_emulator, body: bytes, code: str, names: str
) -> None:
    emulator = private_emulator()
    service = ShareServiceClient.from_connection_string(emulator.connection_string)
    before = service.get_service_properties()
    sas = generate_account_sas(
        DEV_ACCOUNT, DEV_KEY, ResourceTypes(service=True), AccountSasPermissions(read=True, write=True),
        expiry=datetime.now(UTC) + timedelta(minutes=5),
    )  # fmt: skip
    url = f"{emulator.endpoint}?restype=service&comp=properties&{sas}"
    response = requests.put(url, data=body, headers={"x-ms-version": "2025-05-05"}, timeout=10)
    assert response.status_code == 400
    assert response.headers["x-ms-error-code"] == code and names in response.text
    assert service.get_service_properties() == before


def test_share_access_tier_is_stored(file_service: ShareServiceClient, share: ShareClient) -> None:
    assert share.get_share_properties().access_tier == "TransactionOptimized"
    share.set_share_properties(access_tier="Hot")
    props = share.get_share_properties()
    assert props.access_tier == "Hot"
    share.set_share_properties(access_tier=ShareAccessTier("Cool"), quota=2)
    props = share.get_share_properties()
    assert (props.access_tier, props.quota) == ("Cool", 2)
    listed = {s.name: s for s in file_service.list_shares(name_starts_with=share.share_name)}
    assert listed[share.share_name].access_tier == "Cool"

    hot = file_service.get_share_client(share.share_name + "-hot")
    hot.create_share(access_tier=ShareAccessTier("Hot"))
    try:
        assert hot.get_share_properties().access_tier == "Hot"
    finally:
        hot.delete_share()


def test_unknown_or_premium_tier_is_refused(file_service: ShareServiceClient, share: ShareClient) -> None:
    for tier in ("Premium", "Frozen"):
        with pytest.raises(HttpResponseError) as caught:
            share.set_share_properties(access_tier=tier)
        assert caught.value.error_code == "InvalidHeaderValue" and tier in caught.value.message
    assert share.get_share_properties().access_tier == "TransactionOptimized"
    refused = file_service.get_share_client(share.share_name + "-p")
    with pytest.raises(HttpResponseError):
        refused.create_share(access_tier="Premium")
    assert not list(file_service.list_shares(name_starts_with=refused.share_name))  # nothing created

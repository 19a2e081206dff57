from http import HTTPStatus
from typing import Any

import httpx

from ...client import AuthenticatedClient, Client
from ...models.comparison import Comparison
from ...models.problem import Problem
from ...types import UNSET, Response


def _get_kwargs(
    *,
    jobs: str,
) -> dict[str, Any]:

    params: dict[str, Any] = {}

    params["jobs"] = jobs

    params = {k: v for k, v in params.items() if v is not UNSET and v is not None}

    _kwargs: dict[str, Any] = {
        "method": "get",
        "url": "/v1/compare",
        "params": params,
    }

    return _kwargs


def _parse_response(*, client: AuthenticatedClient | Client, response: httpx.Response) -> Comparison | Problem:
    if response.status_code == 200:
        response_200 = Comparison.from_dict(response.json())

        return response_200

    if response.status_code == 422:
        response_422 = Problem.from_dict(response.json())

        return response_422

    response_default = Problem.from_dict(response.json())

    return response_default


def _build_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> Response[Comparison | Problem]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    *,
    client: AuthenticatedClient,
    jobs: str,
) -> Response[Comparison | Problem]:
    """Compare

     One table of the artifacts of several jobs on the same model, each against the original.

    Args:
        jobs (str): Comma-separated job ids, all on the same model.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[Comparison | Problem]
    """

    kwargs = _get_kwargs(
        jobs=jobs,
    )

    response = client.get_httpx_client().request(
        **kwargs,
    )

    return _build_response(client=client, response=response)


def sync(
    *,
    client: AuthenticatedClient,
    jobs: str,
) -> Comparison | Problem | None:
    """Compare

     One table of the artifacts of several jobs on the same model, each against the original.

    Args:
        jobs (str): Comma-separated job ids, all on the same model.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Comparison | Problem
    """

    return sync_detailed(
        client=client,
        jobs=jobs,
    ).parsed


async def asyncio_detailed(
    *,
    client: AuthenticatedClient,
    jobs: str,
) -> Response[Comparison | Problem]:
    """Compare

     One table of the artifacts of several jobs on the same model, each against the original.

    Args:
        jobs (str): Comma-separated job ids, all on the same model.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[Comparison | Problem]
    """

    kwargs = _get_kwargs(
        jobs=jobs,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    *,
    client: AuthenticatedClient,
    jobs: str,
) -> Comparison | Problem | None:
    """Compare

     One table of the artifacts of several jobs on the same model, each against the original.

    Args:
        jobs (str): Comma-separated job ids, all on the same model.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Comparison | Problem
    """

    return (
        await asyncio_detailed(
            client=client,
            jobs=jobs,
        )
    ).parsed

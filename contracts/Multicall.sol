// SPDX-License-Identifier: MIT
pragma solidity >=0.8.28 <0.9.0;

/// @title Multicall: batched calls for a local chain's read paths
/// @notice Written for x402gate's local test chain. It offers the `tryAggregate` entry point of
///         the widely deployed Multicall3 interface, which x402 facilitators use to read several
///         values (and simulate a deposit) in one `eth_call`. The test kit places its runtime
///         code at Multicall3's usual address with `anvil_setCode`; it keeps no state.
/// @dev Test fixture only: never deploy to a public network.
contract Multicall {
    struct Call {
        address target;
        bytes callData;
    }

    struct Result {
        bool success;
        bytes returnData;
    }

    error CallFailed(uint256 index);

    /// @notice Run `calls` in order; with `requireSuccess` any failure reverts everything,
    ///         otherwise each result says whether its call succeeded.
    function tryAggregate(bool requireSuccess, Call[] calldata calls)
        external
        payable
        returns (Result[] memory results)
    {
        results = new Result[](calls.length);
        for (uint256 i = 0; i < calls.length; ++i) {
            (bool success, bytes memory returnData) = calls[i].target.call(calls[i].callData);
            if (requireSuccess && !success) revert CallFailed(i);
            results[i] = Result(success, returnData);
        }
    }
}

// SPDX-License-Identifier: MIT
pragma solidity >=0.8.28 <0.9.0;

interface IERC3009Receive {
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes calldata signature
    ) external;
}

/// @title ERC3009DepositCollector: pulls batch-settlement deposits with EIP-3009
/// @notice Written for x402gate's local test chain from the x402 `batch-settlement` EVM
///         specification. The settlement contract calls `collect` during a deposit; the
///         collector redeems the payer's EIP-3009 `ReceiveWithAuthorization` (signed to this
///         collector, with `nonce = keccak256(abi.encode(channelId, salt))`, so an
///         authorisation funds exactly one channel) and forwards the tokens to the settlement
///         contract.
/// @dev The settlement contract is reached as a constant at its canonical address rather than
///      a constructor argument, so this runtime code works when placed with `anvil_setCode`.
///      `collectorData = abi.encode(uint256 validAfter, uint256 validBefore, uint256 salt,
///      bytes signature)`. Test fixture only: never deploy to a public network.
contract ERC3009DepositCollector {
    /// @notice The canonical x402 batch-settlement contract, the only caller of `collect`.
    address public constant SETTLEMENT = 0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003;

    error CallerNotSettlement(address caller);
    error CollectShortfall(uint256 expected, uint256 received);
    error ForwardFailed(address token, uint256 amount);

    function collect(
        address payer,
        address token,
        uint256 amount,
        bytes32 channelId,
        bytes calldata data
    ) external {
        if (msg.sender != SETTLEMENT) revert CallerNotSettlement(msg.sender);
        (uint256 validAfter, uint256 validBefore, uint256 salt, bytes memory signature) =
            abi.decode(data, (uint256, uint256, uint256, bytes));
        bytes32 nonce = keccak256(abi.encode(channelId, salt));

        uint256 before = _balanceOf(token);
        IERC3009Receive(token).receiveWithAuthorization(
            payer, address(this), amount, validAfter, validBefore, nonce, signature
        );
        uint256 received = _balanceOf(token) - before;
        if (received < amount) revert CollectShortfall(amount, received);

        (bool ok, bytes memory result) =
            token.call(abi.encodeWithSignature("transfer(address,uint256)", SETTLEMENT, amount));
        if (!ok || (result.length != 0 && !abi.decode(result, (bool)))) {
            revert ForwardFailed(token, amount);
        }
    }

    function _balanceOf(address token) private view returns (uint256) {
        (bool ok, bytes memory result) =
            token.staticcall(abi.encodeWithSignature("balanceOf(address)", address(this)));
        require(ok && result.length >= 32, "ERC3009DepositCollector: balanceOf failed");
        return abi.decode(result, (uint256));
    }
}

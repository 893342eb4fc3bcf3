// SPDX-License-Identifier: MIT
pragma solidity >=0.8.28 <0.9.0;

/// @title TestWallet: a minimal smart-contract account for local-chain tests
/// @notice Written for x402gate's tests. One owner key controls it: `execute` runs a call as the
///         wallet, and `isValidSignature` (EIP-1271) accepts a digest signed by the owner. It
///         stands in for the smart wallets that sign x402 payments and vouchers by EIP-1271.
/// @dev Test fixture only: never deploy to a public network.
contract TestWallet {
    /// @notice The EOA whose ECDSA signatures this wallet accepts.
    address public immutable owner;

    // secp256k1n / 2: a larger s is the malleable twin of a valid signature (EIP-2).
    uint256 private constant _HALF_CURVE_ORDER =
        0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;
    bytes4 private constant _MAGIC_VALUE = 0x1626ba7e; // isValidSignature(bytes32,bytes)
    bytes4 private constant _INVALID = 0xffffffff;

    error NotOwner(address caller);

    constructor(address owner_) {
        owner = owner_;
    }

    /// @notice Call `target` with `data` as this wallet; a revert is passed through.
    function execute(address target, bytes calldata data) external returns (bytes memory) {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        (bool ok, bytes memory result) = target.call(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(result, 32), mload(result))
            }
        }
        return result;
    }

    /// @notice EIP-1271: valid when `signature` is the owner's 65-byte ECDSA signature of
    ///         `digest` (low s, v of 27 or 28).
    function isValidSignature(bytes32 digest, bytes calldata signature)
        external
        view
        returns (bytes4)
    {
        if (signature.length != 65) return _INVALID;
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if ((v != 27 && v != 28) || uint256(s) > _HALF_CURVE_ORDER) return _INVALID;
        address signer = ecrecover(digest, v, r, s);
        return signer != address(0) && signer == owner ? _MAGIC_VALUE : _INVALID;
    }
}

// SPDX-License-Identifier: MIT
pragma solidity >=0.8.28 <0.9.0;

/// @notice Channel identity: every field is fixed for the channel's life (x402 batch-settlement).
struct ChannelConfig {
    address payer;
    address payerAuthorizer;
    address receiver;
    address receiverAuthorizer;
    address token;
    uint40 withdrawDelay;
    bytes32 salt;
}

/// @notice A payer-signed cumulative ceiling for one channel.
struct Voucher {
    ChannelConfig channel;
    uint128 maxClaimableAmount;
}

/// @notice One row of a claim batch: a voucher, its signature and the new claimed total.
struct VoucherClaim {
    Voucher voucher;
    bytes signature;
    uint128 totalClaimed;
}

/// @notice What a settlement contract asks of a deposit collector: move `amount` of `token`
///         from `payer` to the settlement contract, authorised by `data`, for `channelId`.
interface IDepositCollector {
    function collect(
        address payer,
        address token,
        uint256 amount,
        bytes32 channelId,
        bytes calldata data
    ) external;
}

interface IERC20Minimal {
    function balanceOf(address account) external view returns (uint256);
    function transfer(address to, uint256 value) external returns (bool);
}

interface IERC1271 {
    function isValidSignature(bytes32 digest, bytes calldata signature)
        external
        view
        returns (bytes4);
}

/// @title BatchSettlement: an escrow for x402 batch-settlement payment channels
/// @notice Written for x402gate's local test chain from the x402 `batch-settlement` EVM
///         specification. Payers deposit into a channel once; receivers claim cumulative,
///         payer-signed vouchers for many channels in one call and settle the claimed total in
///         one transfer; unclaimed escrow goes back to the payer through a receiver-approved
///         refund or, unilaterally, through a timed withdrawal.
/// @dev The function signatures, storage views, EIP-712 types and the `Settled` event follow
///      the specification so the official x402 clients and facilitators work unchanged. The
///      contract has no constructor arguments and no immutables, and computes its EIP-712
///      domain from `address(this)` at call time: its runtime code alone can be placed at the
///      canonical address with `anvil_setCode`. Test fixture only: never deploy to a public
///      network.
contract BatchSettlement {
    // ---------------------------------------------------------------- constants

    uint40 public constant MIN_WITHDRAW_DELAY = 900; // 15 minutes
    uint40 public constant MAX_WITHDRAW_DELAY = 2_592_000; // 30 days

    bytes32 private constant _DOMAIN_TYPEHASH = keccak256(
        "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
    );
    bytes32 private constant _NAME_HASH = keccak256("x402 Batch Settlement");
    bytes32 private constant _VERSION_HASH = keccak256("1");
    bytes32 public constant CHANNEL_CONFIG_TYPEHASH = keccak256(
        "ChannelConfig(address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)"
    );
    bytes32 public constant VOUCHER_TYPEHASH =
        keccak256("Voucher(bytes32 channelId,uint128 maxClaimableAmount)");
    bytes32 public constant REFUND_TYPEHASH =
        keccak256("Refund(bytes32 channelId,uint256 nonce,uint128 amount)");
    bytes32 public constant CLAIM_ENTRY_TYPEHASH = keccak256(
        "ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)"
    );
    // EIP-712: a type string lists the types it references after its own definition.
    bytes32 public constant CLAIM_BATCH_TYPEHASH = keccak256(
        "ClaimBatch(ClaimEntry[] claims)ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)"
    );

    // secp256k1n / 2: a larger s is the malleable twin of a valid signature (EIP-2).
    uint256 private constant _HALF_CURVE_ORDER =
        0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;
    bytes4 private constant _ERC1271_MAGIC_VALUE = 0x1626ba7e;

    // ---------------------------------------------------------------- state

    struct Channel {
        uint128 balance; // deposited minus refunded and withdrawn (claimed funds included)
        uint128 totalClaimed; // cumulative amount claimed by the receiver side
    }

    struct PendingWithdrawal {
        uint128 amount;
        uint40 initiatedAt;
    }

    struct ReceiverAccount {
        uint128 totalClaimed; // over every channel of this receiver and token
        uint128 totalSettled; // already transferred to the receiver
    }

    mapping(bytes32 channelId => Channel) public channels;
    mapping(bytes32 channelId => PendingWithdrawal) public pendingWithdrawals;
    mapping(address receiver => mapping(address token => ReceiverAccount)) public receivers;
    /// @notice The nonce the next `refundWithSignature` of a channel must carry.
    mapping(bytes32 channelId => uint256) public refundNonce;

    bool private transient _entered;

    // ---------------------------------------------------------------- events

    /// @notice A deposit found no unclaimed escrow: a new channel, or a drained one refunded.
    event ChannelCreated(bytes32 indexed channelId, ChannelConfig config);
    /// @notice A refund or a withdrawal left no unclaimed escrow in the channel.
    event ChannelClosed(bytes32 indexed channelId, ChannelConfig config);
    event Deposited(
        bytes32 indexed channelId, address indexed sender, uint128 amount, uint128 balance
    );
    event Claimed(
        bytes32 indexed channelId, address indexed sender, uint128 amount, uint128 totalClaimed
    );
    event Settled(
        address indexed receiver, address indexed token, address indexed sender, uint128 amount
    );
    event Refunded(bytes32 indexed channelId, address indexed sender, uint128 amount, uint256 nonce);
    event WithdrawInitiated(bytes32 indexed channelId, uint128 amount, uint40 initiatedAt);
    event WithdrawFinalized(bytes32 indexed channelId, uint128 amount);

    // ---------------------------------------------------------------- errors

    error Reentrancy();
    error InvalidChannelConfig();
    error WithdrawDelayOutOfRange(uint40 withdrawDelay);
    error ZeroAmount();
    error DepositNotReceived(uint256 expected, uint256 received);
    error BalanceOverflow();
    error NotReceiverSide(address caller);
    error NotPayerSide(address caller);
    error EmptyClaimBatch();
    error AuthorizerMismatch(address expected, address actual);
    error ClaimAboveVoucher(uint128 totalClaimed, uint128 maxClaimableAmount);
    error ClaimAboveBalance(uint128 totalClaimed, uint128 balance);
    error InvalidVoucherSignature(bytes32 channelId);
    error InvalidAuthorizerSignature();
    error RefundNonceMismatch(uint256 expected, uint256 actual);
    error WithdrawAboveAvailable(uint128 amount, uint128 available);
    error WithdrawalPending(bytes32 channelId);
    error NoPendingWithdrawal(bytes32 channelId);
    error WithdrawDelayNotElapsed(uint256 finalizableAt);
    error TokenTransferFailed(address token, address to, uint256 amount);

    modifier nonReentrant() {
        if (_entered) revert Reentrancy();
        _entered = true;
        _;
        _entered = false;
    }

    // ---------------------------------------------------------------- views

    /// @notice The EIP-712 domain separator, computed from this contract's current address.
    // solhint-disable-next-line func-name-mixedcase
    function DOMAIN_SEPARATOR() public view returns (bytes32) {
        return keccak256(
            abi.encode(_DOMAIN_TYPEHASH, _NAME_HASH, _VERSION_HASH, block.chainid, address(this))
        );
    }

    /// @notice The channel id: the EIP-712 hash of the config under this contract's domain.
    function getChannelId(ChannelConfig calldata config) public view returns (bytes32) {
        bytes32 structHash = keccak256(
            abi.encode(
                CHANNEL_CONFIG_TYPEHASH,
                config.payer,
                config.payerAuthorizer,
                config.receiver,
                config.receiverAuthorizer,
                config.token,
                config.withdrawDelay,
                config.salt
            )
        );
        return _typedDigest(structHash);
    }

    function getVoucherDigest(bytes32 channelId, uint128 maxClaimableAmount)
        public
        view
        returns (bytes32)
    {
        return _typedDigest(keccak256(abi.encode(VOUCHER_TYPEHASH, channelId, maxClaimableAmount)));
    }

    function getRefundDigest(bytes32 channelId, uint256 nonce, uint128 amount)
        public
        view
        returns (bytes32)
    {
        return _typedDigest(keccak256(abi.encode(REFUND_TYPEHASH, channelId, nonce, amount)));
    }

    function getClaimBatchDigest(VoucherClaim[] calldata voucherClaims)
        public
        view
        returns (bytes32)
    {
        bytes32[] memory entries = new bytes32[](voucherClaims.length);
        for (uint256 i = 0; i < voucherClaims.length; ++i) {
            VoucherClaim calldata row = voucherClaims[i];
            entries[i] = keccak256(
                abi.encode(
                    CLAIM_ENTRY_TYPEHASH,
                    getChannelId(row.voucher.channel),
                    row.voucher.maxClaimableAmount,
                    row.totalClaimed
                )
            );
        }
        // An array member is hashed as keccak256 of its elements' struct hashes, concatenated.
        bytes32 claimsHash = keccak256(abi.encodePacked(entries));
        return _typedDigest(keccak256(abi.encode(CLAIM_BATCH_TYPEHASH, claimsHash)));
    }

    // ---------------------------------------------------------------- deposit

    /// @notice Fund a channel with `amount` of its token, pulled by `collector` from the payer
    ///         under the authorisation in `collectorData`. Anyone may submit it (facilitators
    ///         sponsor the gas); the credit only counts tokens that actually arrived.
    function deposit(
        ChannelConfig calldata config,
        uint128 amount,
        address collector,
        bytes calldata collectorData
    ) external nonReentrant {
        _checkConfig(config);
        if (amount == 0) revert ZeroAmount();
        bytes32 channelId = getChannelId(config);

        IERC20Minimal token = IERC20Minimal(config.token);
        uint256 before = token.balanceOf(address(this));
        IDepositCollector(collector).collect(
            config.payer, config.token, amount, channelId, collectorData
        );
        uint256 received = token.balanceOf(address(this)) - before;
        if (received < amount) revert DepositNotReceived(amount, received);

        Channel storage channel = channels[channelId];
        bool wasEmpty = channel.balance == channel.totalClaimed;
        uint256 newBalance = uint256(channel.balance) + amount;
        if (newBalance > type(uint128).max) revert BalanceOverflow();
        channel.balance = uint128(newBalance);
        if (wasEmpty) emit ChannelCreated(channelId, config);
        emit Deposited(channelId, msg.sender, amount, uint128(newBalance));
    }

    // ---------------------------------------------------------------- claim and settle

    /// @notice Claim vouchers; the caller must be the receiver or receiver authorizer of every
    ///         row. Only accounting changes: `settle` moves the tokens.
    function claim(VoucherClaim[] calldata voucherClaims) external nonReentrant {
        for (uint256 i = 0; i < voucherClaims.length; ++i) {
            ChannelConfig calldata config = voucherClaims[i].voucher.channel;
            if (msg.sender != config.receiver && msg.sender != config.receiverAuthorizer) {
                revert NotReceiverSide(msg.sender);
            }
        }
        _claimAll(voucherClaims);
    }

    /// @notice Claim vouchers on the strength of one EIP-712 `ClaimBatch` signature by the
    ///         receiver authorizer shared by every row; anyone may relay it.
    function claimWithSignature(
        VoucherClaim[] calldata voucherClaims,
        bytes calldata authorizerSignature
    ) external nonReentrant {
        if (voucherClaims.length == 0) revert EmptyClaimBatch();
        address authorizer = voucherClaims[0].voucher.channel.receiverAuthorizer;
        for (uint256 i = 1; i < voucherClaims.length; ++i) {
            address other = voucherClaims[i].voucher.channel.receiverAuthorizer;
            if (other != authorizer) revert AuthorizerMismatch(authorizer, other);
        }
        if (!_isValidSignature(authorizer, getClaimBatchDigest(voucherClaims), authorizerSignature)) {
            revert InvalidAuthorizerSignature();
        }
        _claimAll(voucherClaims);
    }

    /// @notice Transfer everything claimed and not yet settled for `receiver` in `token`.
    ///         Permissionless: the tokens can only go to the receiver.
    function settle(address receiver, address token) external nonReentrant {
        ReceiverAccount storage account = receivers[receiver][token];
        uint128 amount = account.totalClaimed - account.totalSettled;
        if (amount == 0) return;
        account.totalSettled = account.totalClaimed;
        _transferOut(token, receiver, amount);
        emit Settled(receiver, token, msg.sender, amount);
    }

    // ---------------------------------------------------------------- refund

    /// @notice Return up to `amount` of unclaimed escrow to the payer; called by the receiver
    ///         or its authorizer.
    function refund(ChannelConfig calldata config, uint128 amount) external nonReentrant {
        if (msg.sender != config.receiver && msg.sender != config.receiverAuthorizer) {
            revert NotReceiverSide(msg.sender);
        }
        _refund(config, getChannelId(config), amount);
    }

    /// @notice Same as `refund`, relayed by anyone with the receiver authorizer's EIP-712
    ///         `Refund` signature for the channel's current nonce.
    function refundWithSignature(
        ChannelConfig calldata config,
        uint128 amount,
        uint256 nonce,
        bytes calldata receiverAuthorizerSignature
    ) external nonReentrant {
        bytes32 channelId = getChannelId(config);
        uint256 expected = refundNonce[channelId];
        if (nonce != expected) revert RefundNonceMismatch(expected, nonce);
        bytes32 digest = getRefundDigest(channelId, nonce, amount);
        if (!_isValidSignature(config.receiverAuthorizer, digest, receiverAuthorizerSignature)) {
            revert InvalidAuthorizerSignature();
        }
        _refund(config, channelId, amount);
    }

    // ---------------------------------------------------------------- timed withdrawal

    /// @notice Start the payer's unilateral exit: `amount` of unclaimed escrow becomes
    ///         withdrawable once the channel's withdraw delay has passed. The receiver side
    ///         can still claim vouchers meanwhile.
    function initiateWithdraw(ChannelConfig calldata config, uint128 amount)
        external
        nonReentrant
    {
        _checkPayerSide(config);
        if (amount == 0) revert ZeroAmount();
        bytes32 channelId = getChannelId(config);
        if (pendingWithdrawals[channelId].amount != 0) revert WithdrawalPending(channelId);
        Channel storage channel = channels[channelId];
        uint128 available = channel.balance - channel.totalClaimed;
        if (amount > available) revert WithdrawAboveAvailable(amount, available);
        uint40 now_ = uint40(block.timestamp);
        pendingWithdrawals[channelId] = PendingWithdrawal(amount, now_);
        emit WithdrawInitiated(channelId, amount, now_);
    }

    /// @notice Complete a timed withdrawal after the delay; the amount is capped by what is
    ///         still unclaimed at this point.
    function finalizeWithdraw(ChannelConfig calldata config) external nonReentrant {
        _checkPayerSide(config);
        bytes32 channelId = getChannelId(config);
        PendingWithdrawal memory pending = pendingWithdrawals[channelId];
        if (pending.amount == 0) revert NoPendingWithdrawal(channelId);
        uint256 finalizableAt = uint256(pending.initiatedAt) + config.withdrawDelay;
        if (block.timestamp < finalizableAt) revert WithdrawDelayNotElapsed(finalizableAt);
        delete pendingWithdrawals[channelId];

        Channel storage channel = channels[channelId];
        uint128 available = channel.balance - channel.totalClaimed;
        uint128 amount = pending.amount < available ? pending.amount : available;
        channel.balance -= amount;
        if (amount > 0) _transferOut(config.token, config.payer, amount);
        emit WithdrawFinalized(channelId, amount);
        if (amount > 0 && channel.balance == channel.totalClaimed) {
            emit ChannelClosed(channelId, config);
        }
    }

    // ---------------------------------------------------------------- batching

    /// @notice Run several calls of this contract in one transaction (claim then refund, for
    ///         instance); each keeps the caller as `msg.sender`, and any failure reverts all.
    function multicall(bytes[] calldata data) external returns (bytes[] memory results) {
        results = new bytes[](data.length);
        for (uint256 i = 0; i < data.length; ++i) {
            (bool ok, bytes memory result) = address(this).delegatecall(data[i]);
            if (!ok) {
                assembly ("memory-safe") {
                    revert(add(result, 32), mload(result))
                }
            }
            results[i] = result;
        }
    }

    // ---------------------------------------------------------------- internals

    function _typedDigest(bytes32 structHash) private view returns (bytes32) {
        return keccak256(abi.encodePacked(hex"1901", DOMAIN_SEPARATOR(), structHash));
    }

    function _checkConfig(ChannelConfig calldata config) private pure {
        if (
            config.payer == address(0) || config.receiver == address(0)
                || config.receiverAuthorizer == address(0) || config.token == address(0)
        ) revert InvalidChannelConfig();
        if (
            config.withdrawDelay < MIN_WITHDRAW_DELAY || config.withdrawDelay > MAX_WITHDRAW_DELAY
        ) revert WithdrawDelayOutOfRange(config.withdrawDelay);
    }

    function _checkPayerSide(ChannelConfig calldata config) private view {
        bool isPayer = msg.sender == config.payer;
        bool isAuthorizer =
            config.payerAuthorizer != address(0) && msg.sender == config.payerAuthorizer;
        if (!isPayer && !isAuthorizer) revert NotPayerSide(msg.sender);
    }

    function _claimAll(VoucherClaim[] calldata voucherClaims) private {
        for (uint256 i = 0; i < voucherClaims.length; ++i) {
            _claimOne(voucherClaims[i]);
        }
    }

    function _claimOne(VoucherClaim calldata row) private {
        ChannelConfig calldata config = row.voucher.channel;
        uint128 ceiling = row.voucher.maxClaimableAmount;
        if (row.totalClaimed > ceiling) revert ClaimAboveVoucher(row.totalClaimed, ceiling);
        bytes32 channelId = getChannelId(config);
        // A payer authorizer is an EOA and signs with ECDSA; without one the payer itself
        // signs, which may be a contract wallet (EIP-1271).
        bytes32 digest = getVoucherDigest(channelId, ceiling);
        bool valid = config.payerAuthorizer != address(0)
            ? _recover(digest, row.signature) == config.payerAuthorizer
            : _isValidSignature(config.payer, digest, row.signature);
        if (!valid) revert InvalidVoucherSignature(channelId);

        Channel storage channel = channels[channelId];
        if (row.totalClaimed > channel.balance) {
            revert ClaimAboveBalance(row.totalClaimed, channel.balance);
        }
        // Cumulative: a row at or below what is already claimed is superseded, not an error.
        if (row.totalClaimed <= channel.totalClaimed) return;
        uint128 delta = row.totalClaimed - channel.totalClaimed;
        channel.totalClaimed = row.totalClaimed;
        receivers[config.receiver][config.token].totalClaimed += delta;
        emit Claimed(channelId, msg.sender, delta, row.totalClaimed);
    }

    function _refund(ChannelConfig calldata config, bytes32 channelId, uint128 amount) private {
        if (amount == 0) revert ZeroAmount();
        // The nonce moves first: any refund, even one that finds nothing to return, voids
        // signatures made for the previous nonce.
        uint256 nonce = refundNonce[channelId]++;
        Channel storage channel = channels[channelId];
        uint128 available = channel.balance - channel.totalClaimed;
        uint128 refunded = amount < available ? amount : available;
        if (refunded == 0) return;
        channel.balance -= refunded;

        PendingWithdrawal storage pending = pendingWithdrawals[channelId];
        if (pending.amount != 0) {
            if (refunded >= pending.amount) {
                delete pendingWithdrawals[channelId];
            } else {
                pending.amount -= refunded;
            }
        }
        _transferOut(config.token, config.payer, refunded);
        emit Refunded(channelId, msg.sender, refunded, nonce);
        if (channel.balance == channel.totalClaimed) emit ChannelClosed(channelId, config);
    }

    function _transferOut(address token, address to, uint256 amount) private {
        // Accept tokens that return nothing as well as those that return true.
        (bool ok, bytes memory result) =
            token.call(abi.encodeCall(IERC20Minimal.transfer, (to, amount)));
        if (!ok || (result.length != 0 && !abi.decode(result, (bool)))) {
            revert TokenTransferFailed(token, to, amount);
        }
    }

    function _isValidSignature(address signer, bytes32 digest, bytes calldata signature)
        private
        view
        returns (bool)
    {
        if (signer == address(0)) return false;
        if (signer.code.length == 0) return _recover(digest, signature) == signer;
        (bool ok, bytes memory result) =
            signer.staticcall(abi.encodeCall(IERC1271.isValidSignature, (digest, signature)));
        return ok && result.length >= 32 && abi.decode(result, (bytes4)) == _ERC1271_MAGIC_VALUE;
    }

    /// @dev ECDSA recovery of a 65-byte (r, s, v) signature; the zero address when invalid.
    function _recover(bytes32 digest, bytes calldata signature) private pure returns (address) {
        if (signature.length != 65) return address(0);
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if (v < 27) v += 27;
        if ((v != 27 && v != 28) || uint256(s) > _HALF_CURVE_ORDER) return address(0);
        return ecrecover(digest, v, r, s);
    }
}

# pragma version ~=0.4.3
"""
@title AccountingV2, re-implemented in Vyper for tests on a real EVM
@notice The Lloom network's accounting contract is AccountingV2 (Solidity). No Solidity
        compiler can be fetched where our tests run, so this contract implements its
        interface in Vyper: the same function selectors, struct layouts, EIP-712 type
        hashes and domain ("Lloom Network" / "1.0.0" / chain id / this address), and the
        checks docs/PROTOCOL.md section 7 lists from its source. tests/test_contract.py
        recomputes every selector and type hash from the Solidity signatures.
        Where the Solidity source was not available to us (the field list of
        `DetailedUsageRecord` and of the statistics structs, the revert strings other
        than "Invalid nonce"), the layout here is ours; the executor reads none of it
        except through `getUsageRecord`, `getCurrentNonce` and the revert reason.
@dev    Signatures follow OpenZeppelin's ECDSA.recover: 65 bytes r||s||v with v 27 or 28
        and s in the lower half order; the settlement loop sends v as 27/28.
"""

struct LlmRequestCommitment:
    executor: address
    model: String[256]
    promptHash: bytes32
    systemPromptHash: bytes32
    maxTokens: uint32
    temperature: uint32
    inboundPrice: uint256
    outboundPrice: uint256
    nonce: uint64
    deadline: uint64

struct LlmResponseCommitment:
    requestHash: bytes32
    client: address
    model: String[256]
    contentHash: bytes32
    inboundTokens: uint32
    outboundTokens: uint32
    inboundPrice: uint256
    outboundPrice: uint256
    timestamp: uint64
    success: bool

struct DetailedUsageRecord:
    requestHash: bytes32
    executor: address
    client: address
    model: String[256]
    inboundTokens: uint256
    outboundTokens: uint256
    inboundPrice: uint256
    outboundPrice: uint256
    totalCost: uint256
    nonce: uint64
    timestamp: uint64
    success: bool
    processedAt: uint256

struct UsageStats:
    totalRequests: uint256
    totalInboundTokens: uint256
    totalOutboundTokens: uint256
    totalCost: uint256

event RequestProcessed:
    requestHash: indexed(bytes32)
    executor: indexed(address)
    client: indexed(address)
    totalCost: uint256
    nonce: uint64

EIP712_DOMAIN_TYPEHASH: constant(bytes32) = keccak256(
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
LLM_REQUEST_TYPEHASH: constant(bytes32) = keccak256(
    "LlmRequestCommitment(address executor,string model,bytes32 promptHash,bytes32 systemPromptHash,uint32 maxTokens,uint32 temperature,uint256 inboundPrice,uint256 outboundPrice,uint64 nonce,uint64 deadline)"
)
LLM_RESPONSE_TYPEHASH: constant(bytes32) = keccak256(
    "LlmResponseCommitment(bytes32 requestHash,address client,string model,bytes32 contentHash,uint32 inboundTokens,uint32 outboundTokens,uint256 inboundPrice,uint256 outboundPrice,uint64 timestamp,bool success)"
)
NAME: constant(String[13]) = "Lloom Network"
VERSION: constant(String[5]) = "1.0.0"
# secp256k1n / 2: a larger s is the malleable twin of a valid signature (EIP-2)
HALF_ORDER: constant(uint256) = 57896044618658097711785492504343953926418782139537452191302581570759080747168

DOMAIN_SEPARATOR: public(immutable(bytes32))
clientNonces: public(HashMap[address, uint256])
executorStats: public(HashMap[address, UsageStats])
clientStats: public(HashMap[address, UsageStats])
totalRequests: public(uint256)
totalVolume: public(uint256)
usageRecords: HashMap[bytes32, DetailedUsageRecord]


@deploy
def __init__():
    DOMAIN_SEPARATOR = keccak256(
        abi_encode(EIP712_DOMAIN_TYPEHASH, keccak256(NAME), keccak256(VERSION), chain.id, self)
    )


@internal
@pure
def _request_struct_hash(r: LlmRequestCommitment) -> bytes32:
    return keccak256(
        abi_encode(
            LLM_REQUEST_TYPEHASH,
            r.executor,
            keccak256(r.model),
            r.promptHash,
            r.systemPromptHash,
            r.maxTokens,
            r.temperature,
            r.inboundPrice,
            r.outboundPrice,
            r.nonce,
            r.deadline,
        )
    )


@internal
@pure
def _response_struct_hash(r: LlmResponseCommitment) -> bytes32:
    return keccak256(
        abi_encode(
            LLM_RESPONSE_TYPEHASH,
            r.requestHash,
            r.client,
            keccak256(r.model),
            r.contentHash,
            r.inboundTokens,
            r.outboundTokens,
            r.inboundPrice,
            r.outboundPrice,
            r.timestamp,
            r.success,
        )
    )


@internal
@view
def _typed_digest(struct_hash: bytes32) -> bytes32:
    return keccak256(concat(b"\x19\x01", DOMAIN_SEPARATOR, struct_hash))


@internal
@pure
def _recover(digest: bytes32, signature: Bytes[65]) -> address:
    assert len(signature) == 65, "Invalid signature length"
    r: uint256 = convert(slice(signature, 0, 32), uint256)
    s: uint256 = convert(slice(signature, 32, 32), uint256)
    v: uint256 = convert(slice(signature, 64, 1), uint256)
    assert v == 27 or v == 28, "Invalid signature v"
    assert s <= HALF_ORDER, "Invalid signature s"
    signer: address = ecrecover(digest, v, r, s)
    assert signer != empty(address), "Invalid signature"
    return signer


@external
@view
def getRequestMessageHash(request: LlmRequestCommitment) -> bytes32:
    """@notice The EIP-712 digest a client signs: the response commitment's `requestHash`."""
    return self._typed_digest(self._request_struct_hash(request))


@external
@view
def getResponseMessageHash(response: LlmResponseCommitment) -> bytes32:
    """@notice The EIP-712 digest an executor signs (its receipt)."""
    return self._typed_digest(self._response_struct_hash(response))


@external
@view
def getCurrentNonce(client: address) -> uint256:
    """@notice The last settled nonce of `client`; the next request must carry this + 1."""
    return self.clientNonces[client]


@external
@view
def getUsageRecord(requestHash: bytes32) -> DetailedUsageRecord:
    return self.usageRecords[requestHash]


@internal
def _settle(
    request: LlmRequestCommitment,
    response: LlmResponseCommitment,
    request_hash: bytes32,
    executor: address,
    client: address,
):
    assert keccak256(request.model) == keccak256(response.model), "Model mismatch"
    assert request.inboundPrice == response.inboundPrice, "Inbound price mismatch"
    assert request.outboundPrice == response.outboundPrice, "Outbound price mismatch"
    assert convert(request.nonce, uint256) == self.clientNonces[client] + 1, "Invalid nonce"
    assert self.usageRecords[request_hash].processedAt == 0, "Request already processed"
    self.clientNonces[client] = convert(request.nonce, uint256)

    inbound: uint256 = convert(response.inboundTokens, uint256)
    outbound: uint256 = convert(response.outboundTokens, uint256)
    cost: uint256 = inbound * request.inboundPrice + outbound * request.outboundPrice
    self.usageRecords[request_hash] = DetailedUsageRecord(
        requestHash=request_hash,
        executor=executor,
        client=client,
        model=request.model,
        inboundTokens=inbound,
        outboundTokens=outbound,
        inboundPrice=request.inboundPrice,
        outboundPrice=request.outboundPrice,
        totalCost=cost,
        nonce=request.nonce,
        timestamp=response.timestamp,
        success=response.success,
        processedAt=block.timestamp,
    )
    self.executorStats[executor].totalRequests += 1
    self.executorStats[executor].totalInboundTokens += inbound
    self.executorStats[executor].totalOutboundTokens += outbound
    self.executorStats[executor].totalCost += cost
    self.clientStats[client].totalRequests += 1
    self.clientStats[client].totalInboundTokens += inbound
    self.clientStats[client].totalOutboundTokens += outbound
    self.clientStats[client].totalCost += cost
    self.totalRequests += 1
    self.totalVolume += cost
    log RequestProcessed(requestHash=request_hash, executor=executor, client=client, totalCost=cost, nonce=request.nonce)


@external
def processRequestSigned(
    request: LlmRequestCommitment,
    response: LlmResponseCommitment,
    clientSignature: Bytes[65],
    executorSignature: Bytes[65],
):
    """
    @notice Settle a request with both EIP-712 signatures; anyone may send it.
    """
    assert block.timestamp <= convert(request.deadline, uint256), "Request expired"
    request_hash: bytes32 = self._typed_digest(self._request_struct_hash(request))
    assert response.requestHash == request_hash, "Request hash mismatch"
    client: address = self._recover(request_hash, clientSignature)
    executor: address = self._recover(self._typed_digest(self._response_struct_hash(response)), executorSignature)
    assert request.executor == executor, "Invalid executor signature"
    assert response.client == client, "Invalid client signature"
    self._settle(request, response, request_hash, executor, client)


@external
def processRequest(
    request: LlmRequestCommitment,
    response: LlmResponseCommitment,
    clientSignature: Bytes[65],
    promptContent: String[16384],
    systemPromptContent: String[16384],
    responseContent: String[16384],
):
    """
    @notice Settle a request sent by its executor, checking the texts against their hashes.
    """
    assert block.timestamp <= convert(request.deadline, uint256), "Request expired"
    assert request.executor == msg.sender, "Only the executor"
    assert keccak256(promptContent) == request.promptHash, "Prompt hash mismatch"
    system_hash: bytes32 = empty(bytes32)
    if len(systemPromptContent) > 0:
        system_hash = keccak256(systemPromptContent)
    assert system_hash == request.systemPromptHash, "System prompt hash mismatch"
    assert keccak256(responseContent) == response.contentHash, "Content hash mismatch"
    request_hash: bytes32 = self._typed_digest(self._request_struct_hash(request))
    assert response.requestHash == request_hash, "Request hash mismatch"
    client: address = self._recover(request_hash, clientSignature)
    assert response.client == client, "Invalid client signature"
    self._settle(request, response, request_hash, msg.sender, client)

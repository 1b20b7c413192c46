// Package spec is the wire format of /rendezvous/1.0.0 (libp2p/specs rendezvous/README.md, proto2
// `Message`), written by hand with protowire: no maintained go client of the protocol is served by the Go
// module proxy here (waku-org's, berty's and libp2p's own go-libp2p-rendezvous all answer 403), so this
// package is the go client's codec. It knows bytes and messages; the client knows behaviour.
package spec

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"google.golang.org/protobuf/encoding/protowire"
)

const Protocol = "/rendezvous/1.0.0"

// MaxFrame bounds a frame we read, as our door bounds what it reads (README: 16 KiB), with room for a full
// discover page of signed peer records.
const MaxFrame = 1 << 20

// Message.MessageType
const (
	TypeRegister         = 0
	TypeRegisterResponse = 1
	TypeUnregister       = 2
	TypeDiscover         = 3
	TypeDiscoverResponse = 4
)

// Status is Message.ResponseStatus.
type Status uint64

const (
	OK                       Status = 0
	EInvalidNamespace        Status = 100
	EInvalidSignedPeerRecord Status = 101
	EInvalidTTL              Status = 102
	EInvalidCookie           Status = 103
	ENotAuthorized           Status = 200
	EInternalError           Status = 300
	EUnavailable             Status = 400
)

// Registration is Message.Register, as sent and as returned inside a DiscoverResponse.
type Registration struct {
	Namespace        string
	SignedPeerRecord []byte
	TTL              uint64
}

type RegisterResponse struct {
	Status     Status
	StatusText string
	TTL        uint64
}

type DiscoverResponse struct {
	Registrations []Registration
	Cookie        []byte
	Status        Status
	StatusText    string
}

// --- encoding --------------------------------------------------------------------------------------------

func message(kind uint64, field protowire.Number, inner []byte) []byte {
	b := protowire.AppendTag(nil, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, kind)
	b = protowire.AppendTag(b, field, protowire.BytesType)
	return protowire.AppendBytes(b, inner)
}

func appendString(b []byte, n protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, n, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendBytes(b []byte, n protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, n, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func appendUint(b []byte, n protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, n, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

// Register: ttl 0 leaves the field out, which the spec reads as its default (2 h).
func Register(ns string, signedPeerRecord []byte, ttl uint64) []byte {
	inner := appendString(nil, 1, ns)
	inner = appendBytes(inner, 2, signedPeerRecord)
	if ttl != 0 {
		inner = appendUint(inner, 3, ttl)
	}
	return message(TypeRegister, 2, inner)
}

func Unregister(ns string) []byte {
	return message(TypeUnregister, 4, appendString(nil, 1, ns))
}

// UnregisterWithID adds the deprecated id (field 2, libp2p/specs issue 335) that go-libp2p-rendezvous's
// client still sends: a server must read past it.
func UnregisterWithID(ns string, id []byte) []byte {
	return message(TypeUnregister, 4, appendBytes(appendString(nil, 1, ns), 2, id))
}

// Discover: an empty ns, a zero limit and an empty cookie are left out, as optional proto2 fields.
func Discover(ns string, limit uint64, cookie []byte) []byte {
	var inner []byte
	if ns != "" {
		inner = appendString(inner, 1, ns)
	}
	if limit != 0 {
		inner = appendUint(inner, 2, limit)
	}
	if len(cookie) > 0 {
		inner = appendBytes(inner, 3, cookie)
	}
	return message(TypeDiscover, 5, inner)
}

// --- decoding --------------------------------------------------------------------------------------------

type field struct {
	num    protowire.Number
	varint uint64
	bytes  []byte
}

// fields splits a message into its fields, skipping none silently: an unknown wire type is an error.
func fields(b []byte) ([]field, error) {
	var out []field
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
		f := field{num: num}
		switch typ {
		case protowire.VarintType:
			f.varint, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			f.bytes, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
		out = append(out, f)
	}
	return out, nil
}

// Response is a decoded answer: its type and the one sub-message it carries.
type Response struct {
	Type     uint64
	Register *RegisterResponse
	Discover *DiscoverResponse
}

func DecodeResponse(b []byte) (Response, error) {
	var r Response
	top, err := fields(b)
	if err != nil {
		return r, err
	}
	for _, f := range top {
		switch f.num {
		case 1:
			r.Type = f.varint
		case 3:
			if r.Register, err = decodeRegisterResponse(f.bytes); err != nil {
				return r, err
			}
		case 6:
			if r.Discover, err = decodeDiscoverResponse(f.bytes); err != nil {
				return r, err
			}
		}
	}
	return r, nil
}

func decodeRegisterResponse(b []byte) (*RegisterResponse, error) {
	fs, err := fields(b)
	if err != nil {
		return nil, err
	}
	r := &RegisterResponse{}
	for _, f := range fs {
		switch f.num {
		case 1:
			r.Status = Status(f.varint)
		case 2:
			r.StatusText = string(f.bytes)
		case 3:
			r.TTL = f.varint
		}
	}
	return r, nil
}

func decodeRegistration(b []byte) (Registration, error) {
	var r Registration
	fs, err := fields(b)
	if err != nil {
		return r, err
	}
	for _, f := range fs {
		switch f.num {
		case 1:
			r.Namespace = string(f.bytes)
		case 2:
			r.SignedPeerRecord = append([]byte(nil), f.bytes...)
		case 3:
			r.TTL = f.varint
		}
	}
	return r, nil
}

func decodeDiscoverResponse(b []byte) (*DiscoverResponse, error) {
	fs, err := fields(b)
	if err != nil {
		return nil, err
	}
	r := &DiscoverResponse{}
	for _, f := range fs {
		switch f.num {
		case 1:
			reg, err := decodeRegistration(f.bytes)
			if err != nil {
				return nil, err
			}
			r.Registrations = append(r.Registrations, reg)
		case 2:
			r.Cookie = append([]byte(nil), f.bytes...)
		case 3:
			r.Status = Status(f.varint)
		case 4:
			r.StatusText = string(f.bytes)
		}
	}
	return r, nil
}

// --- framing: uvarint length prefix, as every libp2p protobuf protocol ------------------------------------

func WriteFrame(w io.Writer, msg []byte) error {
	frame := binary.AppendUvarint(nil, uint64(len(msg)))
	_, err := w.Write(append(frame, msg...))
	return err
}

var ErrFrameTooLarge = errors.New("frame too large")

func ReadFrame(r *bufio.Reader) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, err
	}
	if n > MaxFrame {
		return nil, fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, n)
	}
	buf := make([]byte, n)
	_, err = io.ReadFull(r, buf)
	return buf, err
}

// Prints a message as JSON with protobuf's C++ printer, the way tensorflow_model_server
// prints its REST status and metadata answers (add_whitespace, fields without presence
// included), so tests/test_proto_json.py can hold tfs/proto_json.py to the real printer.
//
//   proto_json DESCRIPTORS TYPE PROTO_NAMES < message.bin > message.json
//
// DESCRIPTORS: a serialized FileDescriptorSet holding TYPE and everything it imports;
// PROTO_NAMES: 1 for field names as in the .proto (metadata), 0 for JSON names (status).
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/dynamic_message.h>
#include <google/protobuf/util/json_util.h>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: proto_json DESCRIPTORS TYPE PROTO_NAMES < message.bin\n";
    return 2;
  }
  google::protobuf::FileDescriptorSet files;
  std::ifstream in(argv[1], std::ios::binary);
  if (!files.ParseFromIstream(&in)) {
    std::cerr << "cannot read " << argv[1] << "\n";
    return 2;
  }
  google::protobuf::DescriptorPool pool;
  for (const auto& file : files.file()) {
    if (pool.BuildFile(file) == nullptr) {
      std::cerr << "cannot build " << file.name() << "\n";
      return 2;
    }
  }
  const google::protobuf::Descriptor* type = pool.FindMessageTypeByName(argv[2]);
  if (type == nullptr) {
    std::cerr << "no message type " << argv[2] << "\n";
    return 2;
  }
  google::protobuf::DynamicMessageFactory factory(&pool);
  std::unique_ptr<google::protobuf::Message> message(factory.GetPrototype(type)->New());
  std::string bytes((std::istreambuf_iterator<char>(std::cin)),
                    std::istreambuf_iterator<char>());
  if (!message->ParseFromString(bytes)) {
    std::cerr << "cannot parse the message\n";
    return 2;
  }
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.always_print_primitive_fields = true;  // 26 and later: ..._with_no_presence
  options.preserve_proto_field_names = std::string(argv[3]) == "1";
  std::string json;
  auto status = google::protobuf::util::MessageToJsonString(*message, &json, options);
  if (!status.ok()) {
    std::cerr << status.ToString() << "\n";
    return 1;
  }
  std::cout << json;
  return 0;
}

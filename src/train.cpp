// `train`: parses the command line, refuses what this build cannot do, then hands over to the
// training engine. Every failure ends as one "error: ..." line on stderr and a non-zero exit.
#include <cstdio>
#include <exception>

#include "model/model_factory.h"
#include "training/logger.h"
#include "training/options.h"
#include "training/trainer.h"

int main(int argc, char** argv) {
  try {
    llmq::TrainOptions opts = llmq::parse_options(argc, argv);
    llmq::check_implemented(opts);
    llmq::check_input_files(opts);
    if (opts.auto_fit) llmq::apply_auto_fit(opts);
    llmq::Console console(/*rank=*/0);
    console.print(llmq::describe_options(opts));
    return llmq::run_training(opts, llmq::build_model);
  } catch (const llmq::ParseExit& e) {
    if (e.exit_code() == 0) {
      std::fputs(e.text().c_str(), stdout);
    } else {
      std::fprintf(stderr, "error: %s\n", e.text().c_str());
    }
    return e.exit_code();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
